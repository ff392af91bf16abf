//! POSIX behaviour on a real mount that a real filesystem has and cowfs lacked (issue 10):
//! directory streams that end, access times, file handles, open directories, chattr flags,
//! RENAME_WHITEOUT, quiet answers to unsupported ioctls.

mod common;

use common::*;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

fn atime(p: &Path) -> std::io::Result<(i64, i64)> {
    let m = fs::metadata(p)?;
    Ok((m.atime(), m.atime_nsec()))
}

/// Set atime and mtime to `secs_ago` seconds in the past (atime older than mtime by 10 s).
fn age(p: &Path, secs_ago: u64) -> std::io::Result<()> {
    let now = SystemTime::now();
    let times = fs::FileTimes::new()
        .set_accessed(now - Duration::from_secs(secs_ago + 10))
        .set_modified(now - Duration::from_secs(secs_ago));
    fs::File::options().write(true).open(p)?.set_times(times)
}

/// Let the clock move on: the store stamps times by the kernel's coarse clock (one tick, 4 ms
/// here), so operations within a tick share a time, as on ext4.
fn tick() {
    std::thread::sleep(Duration::from_millis(10));
}

fn read_all(p: &Path) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::new();
    fs::File::open(p)?.read_to_end(&mut v)?;
    Ok(v)
}

#[test]
fn renaming_every_entry_while_listing_returns_each_once() -> TestResult {
    // Regression (issue 10, defect 17): walking a 2,000-entry directory while renaming each
    // entry as it is returned yielded 4,000 entries (every renamed entry got a new cookie past
    // the cursor, as in btrfs's infinite readdir bug).
    let m = Mount::new(&[])?;
    let d = m.path("d");
    fs::create_dir(&d)?;
    for i in 0..2000 {
        fs::File::create(d.join(format!("f{i:04}")))?;
    }
    let mut names = std::collections::HashSet::new();
    let mut returned = 0;
    for e in fs::read_dir(&d)? {
        let e = e?;
        returned += 1;
        let name = e.file_name();
        assert!(names.insert(name.clone()), "{name:?} returned twice");
        let mut new = name.clone();
        new.push(".renamed");
        fs::rename(e.path(), d.join(new))?;
        assert!(returned <= 4000, "the listing does not end");
    }
    assert_eq!(returned, 2000);
    // A new pass sees the renamed names, each once.
    let after: Vec<_> = fs::read_dir(&d)?.collect::<Result<_, _>>()?;
    assert_eq!(after.len(), 2000);
    assert!(after
        .iter()
        .all(|e| e.file_name().as_bytes().ends_with(b".renamed")));
    Ok(())
}

#[test]
fn reads_and_listings_update_atime_as_the_mount_says() -> TestResult {
    // Regression (issue 10, defect 18): atime was never updated: a read after a write left it
    // unchanged on a relatime mount (FUSE leaves atime to the daemon). relatime (default),
    // strictatime, noatime, nodiratime; no commit per read.
    let mut m = Mount::new(&["commit=0"])?;
    let f = m.path("f");
    let d = m.path("d");
    fs::create_dir(&d)?;

    // relatime: a read after a write, of whole pages the write left in the page cache.
    let data = pattern(1, 16384);
    fs::write(&f, &data)?;
    let before = atime(&f)?;
    tick();
    assert_eq!(read_all(&f)?, data);
    let after = atime(&f)?;
    assert!(
        after > before,
        "read after write: atime {before:?} -> {after:?}"
    );
    assert_eq!(read_all(&f)?, data);
    assert_eq!(
        atime(&f)?,
        after,
        "relatime: only the first read after a change"
    );
    // Listing a directory that changed.
    fs::File::create(d.join("x"))?;
    let dir_before = atime(&d)?;
    tick();
    assert_eq!(fs::read_dir(&d)?.count(), 1);
    assert!(
        atime(&d)? > dir_before,
        "listing after a change left the directory's atime"
    );
    let commits = m.counter("commits")?;
    for _ in 0..50 {
        age(&f, 100)?;
        read_all(&f)?;
    }
    assert_eq!(m.counter("commits")?, commits, "atime updates committed");

    // strictatime: every read.
    m.remount(&["strictatime"])?;
    let a1 = atime(&f)?;
    tick();
    read_all(&f)?;
    let a2 = atime(&f)?;
    tick();
    read_all(&f)?;
    let a3 = atime(&f)?;
    assert!(a1 < a2 && a2 < a3, "strictatime: {a1:?} {a2:?} {a3:?}");

    // noatime: never; nodiratime: never for directories.
    m.remount(&["noatime"])?;
    age(&f, 100)?;
    let aged = atime(&f)?;
    read_all(&f)?;
    assert_eq!(atime(&f)?, aged, "noatime");
    m.remount(&["nodiratime"])?;
    fs::File::create(d.join("y"))?;
    let da = atime(&d)?;
    assert_eq!(fs::read_dir(&d)?.count(), 2);
    assert_eq!(atime(&d)?, da, "nodiratime");
    read_all(&f)?;
    assert!(atime(&f)? > aged, "nodiratime still updates files");
    Ok(())
}

/// `struct file_handle` with room for the largest handle (MAX_HANDLE_SZ).
#[repr(C)]
struct Handle {
    bytes: u32,
    kind: i32,
    data: [u8; 128],
}

fn name_to_handle(p: &Path) -> std::io::Result<Handle> {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes())?;
    let mut h = Handle {
        bytes: 128,
        kind: 0,
        data: [0; 128],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `c` is NUL-terminated; `h` is a `struct file_handle` header followed by the 128
    // bytes its `handle_bytes` announces; `mount_id` is a live int.
    let rc = unsafe {
        libc::name_to_handle_at(
            libc::AT_FDCWD,
            c.as_ptr(),
            (&mut h as *mut Handle).cast(),
            &mut mount_id,
            0,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(h)
}

fn open_by_handle(mnt: &Path, h: &mut Handle, flags: i32) -> std::io::Result<fs::File> {
    let dir = fs::File::open(mnt)?;
    // O_CLOEXEC: not inherited by the processes other tests spawn meanwhile (a mount daemon
    // holding it would keep this mount busy for ever).
    // SAFETY: `dir` is an open descriptor on the mount; `h` is a handle filled by
    // name_to_handle_at, its header followed by `handle_bytes` bytes.
    let fd = unsafe {
        libc::open_by_handle_at(
            dir.as_raw_fd(),
            (h as *mut Handle).cast(),
            flags | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: open_by_handle_at returned a new descriptor that nothing else owns.
    Ok(fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

#[test]
fn file_handles_survive_remount_and_go_stale_when_deleted() -> TestResult {
    // Regression (issue 10, defect 20): name_to_handle_at/open_by_handle_at on the mount
    // failed with ESTALE (no FUSE export support), so it could not be NFS-exported. Handles
    // stay valid across a remount; a handle to a deleted file is stale, and stays so.
    // (open_by_handle_at needs CAP_DAC_READ_SEARCH: these tests run as root.)
    let mut m = Mount::new(&[])?;
    fs::create_dir(m.path("d"))?;
    fs::write(m.path("d/f"), b"by handle")?;
    fs::write(m.path("d/gone"), b"x")?;
    let mut hf = name_to_handle(&m.path("d/f"))?;
    let mut hd = name_to_handle(&m.path("d"))?;
    let mut hg = name_to_handle(&m.path("d/gone"))?;
    let mut s = String::new();
    open_by_handle(&m.mnt, &mut hf, libc::O_RDONLY)?.read_to_string(&mut s)?;
    assert_eq!(s, "by handle");

    // After a remount the kernel knows none of these inodes: it asks the daemon by node id.
    m.remount(&[])?;
    let mut s = String::new();
    open_by_handle(&m.mnt, &mut hf, libc::O_RDONLY)?.read_to_string(&mut s)?;
    assert_eq!(s, "by handle");
    let dir = open_by_handle(&m.mnt, &mut hd, libc::O_RDONLY | libc::O_DIRECTORY)?;
    assert!(dir.metadata()?.is_dir());
    // The directory's handle reconnects to its path ("..").
    assert_eq!(
        fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd()))?,
        m.path("d")
    );
    drop(dir);

    fs::remove_file(m.path("d/gone"))?;
    fs::write(m.path("d/new"), b"new")?;
    let stale = open_by_handle(&m.mnt, &mut hg, libc::O_RDONLY);
    assert_eq!(errno(stale), Some(libc::ESTALE));
    m.remount(&[])?;
    let stale = open_by_handle(&m.mnt, &mut hg, libc::O_RDONLY);
    assert_eq!(errno(stale), Some(libc::ESTALE), "after a remount");
    Ok(())
}

#[test]
fn open_directories_answer_fstat_after_rmdir_and_rename_over() -> TestResult {
    // Regression (issue 10, defect 21): fstat on an open directory gave ENOENT after rmdir of
    // it or a rename over it. An unlinked open inode of any kind answers getattr (nlink 0)
    // until its last close.
    let m = Mount::new(&[])?;
    fs::create_dir(m.path("d"))?;
    let d = fs::File::open(m.path("d"))?;
    fs::remove_dir(m.path("d"))?;
    let md = d.metadata()?;
    assert!(md.is_dir());
    assert_eq!(md.nlink(), 0);

    fs::create_dir(m.path("a"))?;
    fs::create_dir(m.path("b"))?;
    let b = fs::File::open(m.path("b"))?;
    let b_ino = b.metadata()?.ino();
    fs::rename(m.path("a"), m.path("b"))?;
    let mb = b.metadata()?;
    assert_eq!((mb.ino(), mb.nlink(), mb.is_dir()), (b_ino, 0, true));
    assert_ne!(fs::metadata(m.path("b"))?.ino(), b_ino);

    let mut f = fs::File::create(m.path("f"))?;
    fs::remove_file(m.path("f"))?;
    f.write_all(b"still here")?;
    let mf = f.metadata()?;
    assert_eq!((mf.nlink(), mf.len()), (0, 10));
    drop((d, b, f));
    umount_fsck(m)
}

/// Unmount and check the store is clean.
fn umount_fsck(mut m: Mount) -> TestResult {
    m.umount()?;
    let out = cowfs(&["fsck", m.store.to_str().unwrap_or_default()])?;
    assert!(
        out.status.success(),
        "fsck: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(())
}

fn lsattr(p: &Path) -> Result<String, Box<dyn std::error::Error>> {
    let out = Command::new("lsattr").arg("-d").arg(p).output()?;
    assert!(
        out.status.success(),
        "lsattr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8(out.stdout)?;
    Ok(s.split_whitespace().next().unwrap_or_default().to_string())
}

fn chattr(who: Option<u32>, flags: &str, p: &Path) -> std::io::Result<bool> {
    let mut c = match who {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                "chattr",
            ]);
            c
        }
        None => Command::new("chattr"),
    };
    Ok(c.arg(flags).arg(p).output()?.status.success())
}

#[test]
fn chattr_flags_whiteouts_and_unsupported_ioctls() -> TestResult {
    // Regression (issue 10, defect 23): no chattr/lsattr flags (every such ioctl was logged as
    // [Not Implemented]), no RENAME_WHITEOUT. Immutable and append-only are enforced, even for
    // root; only root sets them; an unsupported ioctl is answered ENOTTY, quietly.
    let m = Mount::new(&["allow_other"])?;
    let f = m.path("f");
    fs::write(&f, b"0123")?;
    assert_eq!(lsattr(&f)?.chars().filter(|&c| c != '-').count(), 0);

    assert!(chattr(None, "+i", &f)?);
    assert!(lsattr(&f)?.contains('i'));
    let eperm = |r: std::io::Result<()>, what: &str| {
        assert_eq!(errno(r), Some(libc::EPERM), "{what} on a chattr'd file");
    };
    eperm(
        fs::OpenOptions::new().append(true).open(&f).map(drop),
        "open to append",
    );
    eperm(fs::write(&f, b"x"), "overwrite");
    eperm(fs::remove_file(&f), "unlink");
    eperm(fs::rename(&f, m.path("g")), "rename");
    eperm(fs::hard_link(&f, m.path("h")), "link");
    eperm(
        fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o600)),
        "chmod",
    );
    assert_eq!(fs::read(&f)?, b"0123");
    assert!(chattr(None, "-i", &f)?);

    assert!(chattr(None, "+a", &f)?);
    fs::OpenOptions::new()
        .append(true)
        .open(&f)?
        .write_all(b"45")?;
    eperm(fs::write(&f, b"x"), "truncating open");
    eperm(
        fs::OpenOptions::new().write(true).open(&f).map(drop),
        "open for writing without O_APPEND",
    );
    eperm(fs::remove_file(&f), "unlink");
    assert_eq!(fs::read(&f)?, b"012345");
    assert!(chattr(None, "-a", &f)?);

    // Owners set the plain flags; immutable and append-only need root (CAP_LINUX_IMMUTABLE).
    let mine = m.path("nobodys");
    fs::write(&mine, b"data")?;
    std::os::unix::fs::chown(&mine, Some(65534), Some(65534))?;
    assert!(chattr(Some(65534), "+dA", &mine)?);
    let flags = lsattr(&mine)?;
    assert!(flags.contains('d') && flags.contains('A'), "{flags}");
    assert!(!chattr(Some(65534), "+i", &mine)?);
    assert!(!chattr(Some(65534), "+d", &f)?, "a non-owner set flags");
    // noatime (+A) keeps reads from touching atime. Read once first: after a read the kernel
    // fetches atime afresh from the daemon, so both stats below come from the store, not one
    // from the kernel's attribute cache.
    fs::read(&mine)?;
    let before = atime(&mine)?;
    fs::read(&mine)?;
    assert_eq!(atime(&mine)?, before);

    // RENAME_WHITEOUT: a character device 0:0 is left under the source name.
    fs::write(m.path("src"), b"moved")?;
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        m.path("src"),
        rustix::fs::CWD,
        m.path("dst"),
        rustix::fs::RenameFlags::WHITEOUT,
    )?;
    assert_eq!(fs::read(m.path("dst"))?, b"moved");
    let w = fs::symlink_metadata(m.path("src"))?;
    assert!(w.file_type().is_char_device());
    assert_eq!((w.rdev(), w.mode() & 0o7777), (0, 0));

    // An ioctl nobody implements: ENOTTY, and nothing in the log.
    let file = fs::File::open(&f)?;
    assert_eq!(
        rustix::fs::ioctl_getflags(&file).map(|fl| fl.bits()).ok(),
        Some(0)
    );
    let mut version: libc::c_long = 0;
    // SAFETY: FS_IOC_GETVERSION writes one long through the pointer, which is live.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_GETVERSION, &mut version) };
    assert_eq!(rc, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ENOTTY)
    );
    let log = fs::read_to_string(m.store.join("cowfs.log"))?;
    assert!(!log.contains("Not Implemented"), "{log}");
    drop(file);
    umount_fsck(m)
}

#[test]
fn chattr_flags_survive_a_remount() -> TestResult {
    // Regression (issue 10, defect 23): the flags are part of the inode record (version 2).
    let mut m = Mount::new(&[])?;
    let f = m.path("f");
    fs::write(&f, b"kept")?;
    assert!(chattr(None, "+ia", &f)?);
    m.remount(&[])?;
    let flags = lsattr(&f)?;
    assert!(flags.contains('i') && flags.contains('a'), "{flags}");
    assert_eq!(
        errno(fs::OpenOptions::new().append(true).open(&f)),
        Some(libc::EPERM)
    );
    assert!(chattr(None, "-ia", &f)?);
    fs::write(&f, b"changed")?;
    umount_fsck(m)
}
