//! Real mounts with the kernel's writeback cache: bytes that write(2) put in the page cache and
//! the kernel has not written back yet must be seen by everything that asks the daemon rather
//! than the page cache: SEEK_DATA/SEEK_HOLE (and so `cp` of a file that looks sparse), `cowfs
//! sync` and `cowfs snapshot`.
//!
//! The kernel writes a file back at every close(2) of one of its descriptors (FLUSH), and a
//! fork copies descriptors that the child then closes (at exec, or at exit): a test process
//! that forks while it holds a dirty file has it written back, and the case under test is gone.
//! So the commands that must meet dirty pages are started (as a shell waiting for a line on
//! its stdin) before the file is opened, and the tests of this file run one at a time.

mod common;

use common::*;
use cowstore::{InodeNo, OpenOptions as StoreOptions, Store};
use nix::unistd::{lseek, Whence};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// One test at a time: another test's fork would close (and so write back) our descriptors.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// A command started now that runs when [`Later::go`] says so: a shell forked before the test
/// opens the files it will check, so it holds none of their descriptors.
struct Later(Child);

fn later(program: &str, args: &[&str]) -> Result<Later, std::io::Error> {
    let child = Command::new("sh")
        .args(["-c", "read -r _ && exec \"$@\"", "sh", program])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    Ok(Later(child))
}

impl Later {
    /// Run it now; Err with its stderr unless it exits 0.
    fn go(mut self) -> Result<String, String> {
        let mut stdin = self.0.stdin.take().ok_or("no stdin")?;
        stdin.write_all(b"go\n").map_err(|e| e.to_string())?;
        drop(stdin);
        let out = self.0.wait_with_output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn mount_with_writeback() -> Result<Mount, Box<dyn std::error::Error>> {
    let m = Mount::new(&["writeback_cache", "commit=0"])?;
    assert_eq!(
        m.stats()?["writeback_cache"].as_bool(),
        Some(true),
        "the kernel took FUSE_WRITEBACK_CACHE"
    );
    Ok(m)
}

fn seek(f: &File, off: u64, whence: Whence) -> Result<u64, nix::Error> {
    let at = lseek(
        f,
        i64::try_from(off).map_err(|_| nix::Error::EINVAL)?,
        whence,
    )?;
    u64::try_from(at).map_err(|_| nix::Error::EINVAL)
}

fn open_rw(p: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(p)
}

#[test]
fn seek_data_and_cp_see_writes_still_in_the_page_cache() -> TestResult {
    // Regression (issue 12, writeback_cache, gap a): the kernel sends FUSE_LSEEK without
    // writing back its dirty pages, and the daemon answered from the store: SEEK_DATA called
    // bytes that write(2) had accepted a hole (ENXIO), and GNU cp, which copies a file that
    // looks sparse (few st_blocks) by its SEEK_DATA extents, copied them as zeros.
    let _one = one_at_a_time();
    let m = mount_with_writeback()?;
    let src = m.path("sparse");
    let (inside, outside) = (m.path("copy"), m.dir.path().join("copy-outside"));
    let cp_inside = later("cp", &[path_str(&src), path_str(&inside)])?;
    let cp_outside = later("cp", &[path_str(&src), path_str(&outside)])?;

    let f = open_rw(&src)?;
    let mut want = pattern(1, MIB as usize);
    f.write_all_at(&want, 0)?;
    f.sync_all()?;
    f.set_len(8 * MIB)?;
    want.resize(8 * MIB as usize, 0);
    let mid = pattern(2, 64 * KIB as usize);
    f.write_all_at(&mid, 4 * MIB)?;
    write_into(&mut want, 4 * MIB, &mid);
    assert_eq!(seek(&f, MIB, Whence::SeekData)?, 4 * MIB, "SEEK_DATA");
    assert_eq!(seek(&f, 4 * MIB, Whence::SeekHole)?, 4 * MIB + 64 * KIB);
    // More cached bytes for the copies to find (the seeks above wrote the first ones back).
    let late = pattern(3, 4 * KIB as usize);
    f.write_all_at(&late, 6 * MIB + 100)?;
    write_into(&mut want, 6 * MIB + 100, &late);
    cp_inside.go()?;
    cp_outside.go()?;
    // The writer is still open: nothing above closed it.
    for copy in [&inside, &outside] {
        let got = fs::read(copy)?;
        assert!(
            got == want,
            "{}: differs from the source at {:?}",
            copy.display(),
            first_difference(&got, &want)
        );
    }
    drop(f);
    assert!(m.counter("seek_writebacks")? >= 2, "the seeks waited");
    // Closed, the file has no dirty pages: a seek is answered from the store at once.
    let before = m.counter("seek_writebacks")?;
    let r = File::open(&src)?;
    assert_eq!(seek(&r, 5 * MIB, Whence::SeekData)?, 6 * MIB);
    drop(r);
    assert_eq!(m.counter("seek_writebacks")?, before);
    Ok(())
}

#[test]
fn seek_data_sees_bytes_stored_through_a_mapping_after_close() -> TestResult {
    // Regression (issue 12, writeback_cache, gap a): a shared writable mapping dirties pages
    // after its descriptor was closed; the open lives on (the daemon sees no RELEASE until
    // munmap), so a seek through another descriptor must still wait for the writeback.
    let _one = one_at_a_time();
    let m = mount_with_writeback()?;
    let p = m.path("mapped");
    let f = open_rw(&p)?;
    let len = MIB as usize;
    f.set_len(MIB)?;
    // SAFETY: a fresh shared mapping of `len` bytes of an open file of that size, written only
    // through the slice below and unmapped before this function returns.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert!(
        addr != libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    drop(f);
    let bytes = pattern(4, 4096);
    {
        // SAFETY: `addr` maps `len` writable bytes (checked above) and outlives the slice.
        let map = unsafe { std::slice::from_raw_parts_mut(addr.cast::<u8>(), len) };
        map[512 * 1024..512 * 1024 + 4096].copy_from_slice(&bytes);
    }
    let r = File::open(&p)?;
    let data = seek(&r, 0, Whence::SeekData);
    let hole = seek(&r, 512 * KIB, Whence::SeekHole);
    // SAFETY: unmapping the mapping made above; the slice is gone.
    unsafe { libc::munmap(addr, len) };
    assert_eq!(data?, 512 * KIB, "SEEK_DATA finds the mapped write");
    assert_eq!(hole?, 516 * KIB);
    let mut got = vec![0u8; 4096];
    r.read_exact_at(&mut got, 512 * KIB)?;
    assert!(got == bytes);
    Ok(())
}

#[test]
fn cowfs_sync_commits_writes_still_in_the_page_cache() -> TestResult {
    // Regression (issue 12, writeback_cache): `cowfs sync` committed the store, which had not
    // yet received what the kernel cached: the bytes were not durable when it returned (and
    // a syncfs(2) before the commit is not enough: the kernel does not wait for a FUSE
    // mount's writeback there).
    let _one = one_at_a_time();
    let mut m = mount_with_writeback()?;
    let sync = later(COWFS, &["sync", path_str(&m.mnt)])?;
    let f = open_rw(&m.path("f"))?;
    let data = pattern(5, 4 * MIB as usize);
    f.write_all_at(&data, 0)?;
    sync.go()?;
    // The daemon dies with the file open and never closed: only what the commit made durable
    // is in the store.
    m.kill_daemon()?;
    lazy_umount(&m.mnt);
    drop(f);
    let store = Store::open(&m.store, &StoreOptions::default())?;
    let a = store.lookup(InodeNo::ROOT, b"f")?;
    assert_eq!(a.size, data.len() as u64);
    assert!(
        store.read_to_vec(a.ino, 0, a.size)? == data,
        "cowfs sync made the cached bytes durable"
    );
    store.close()?;
    Ok(())
}

#[test]
fn a_snapshot_holds_writes_still_in_the_page_cache() -> TestResult {
    // Regression (issue 12, writeback_cache): `cowfs snapshot` clones the tree in the store,
    // which had not yet received what the kernel cached for files still open: the copy missed
    // bytes that write(2) had accepted before the snapshot started (with a syncfs(2) first,
    // about one run in three).
    let _one = one_at_a_time();
    let m = mount_with_writeback()?;
    fs::create_dir(m.path("src"))?;
    let snap = later(
        COWFS,
        &[
            "snapshot",
            path_str(&m.path("src")),
            path_str(&m.path("snap")),
        ],
    )?;
    let f = open_rw(&m.path("src/f"))?;
    let data = pattern(6, 4 * MIB as usize + 300);
    f.write_all_at(&data, 0)?;
    snap.go()?;
    drop(f);
    assert!(
        fs::read(m.path("snap/f"))? == data,
        "the snapshot has the cached bytes"
    );
    Ok(())
}

#[test]
fn syncfs_and_cowfs_sync_succeed_after_unlinks_and_renames_over_files() -> TestResult {
    // Regression (issue 12, writeback_cache): right after an unlink or a rename over a file,
    // the kernel flushes the times it keeps for it with a SETATTR; the store had freed the
    // inode and said ENOENT, which the kernel latched as a writeback error of the mount:
    // every later syncfs(2) failed.
    let _one = one_at_a_time();
    let m = mount_with_writeback()?;
    fs::write(m.path("gone"), b"k")?;
    fs::remove_file(m.path("gone"))?;
    fs::write(m.path("old"), b"1")?;
    fs::write(m.path("new"), b"2")?;
    fs::rename(m.path("new"), m.path("old"))?;
    let dir = File::open(&m.mnt)?;
    nix::unistd::syncfs(&dir)?;
    run_ok(&["sync", path_str(&m.mnt)])?;
    assert_eq!(fs::read(m.path("old"))?, b"2");
    Ok(())
}

#[test]
fn a_read_after_a_write_updates_the_access_time_under_relatime() -> TestResult {
    // Regression (issue 12, writeback_cache, gap d): under the writeback cache the kernel
    // stamps a regular file's mtime by its coarse clock (the last tick); the store stamped the
    // file's creation, its atime included, by a precise clock, up to a tick later. The mtime of
    // a write that followed the creation then preceded the atime, and relatime updated nothing
    // at the read after that write.
    use std::os::unix::fs::MetadataExt;
    let _one = one_at_a_time();
    let m = mount_with_writeback()?;
    let stamp = |md: &fs::Metadata, which: char| match which {
        'a' => (md.atime(), md.atime_nsec()),
        _ => (md.mtime(), md.mtime_nsec()),
    };
    for i in 0..20 {
        let p = m.path(&format!("f{i}"));
        fs::write(&p, b"written after the creation")?;
        let md = fs::metadata(&p)?;
        assert!(
            stamp(&md, 'm') >= stamp(&md, 'a'),
            "file {i}: mtime {:?} before the atime of its creation {:?}",
            stamp(&md, 'm'),
            stamp(&md, 'a')
        );
        std::thread::sleep(Duration::from_millis(10));
        fs::read(&p)?;
        let read = fs::metadata(&p)?;
        assert!(
            stamp(&read, 'a') > stamp(&md, 'a'),
            "file {i}: the read after the write left the atime"
        );
    }
    Ok(())
}

#[test]
fn a_close_costs_no_flush_round_trip_under_the_writeback_cache() -> TestResult {
    // Issue 12 (round trips): under the writeback cache the kernel sends a FLUSH at every
    // close(2), ignoring FOPEN_NOFLUSH, though the daemon has nothing to do for one. The first
    // is answered ENOSYS and the kernel sends no more. The kernel writes a file's dirty pages
    // back before it would send the FLUSH, so every byte still reaches the store at close.
    let _one = one_at_a_time();
    let mut m = mount_with_writeback()?;
    let files: Vec<(String, Vec<u8>)> = (0..10u64)
        .map(|i| (format!("f{i}"), pattern(i, 10_000 + i as usize)))
        .collect();
    for (name, data) in &files {
        fs::write(m.path(name), data)?;
    }
    assert_eq!(
        m.counter("flushes")?,
        1,
        "10 closes under the writeback cache: one FLUSH, answered ENOSYS, then none"
    );
    // The daemon dies without unmounting: only what reached it before is in the store.
    run_ok(&["sync", path_str(&m.mnt)])?;
    m.kill_daemon()?;
    lazy_umount(&m.mnt);
    let store = Store::open(&m.store, &StoreOptions::default())?;
    for (name, data) in &files {
        let a = store.lookup(InodeNo::ROOT, name.as_bytes())?;
        assert!(
            store.read_to_vec(a.ino, 0, a.size)? == *data,
            "{name}: the bytes written before close reached the store"
        );
    }
    store.close()?;
    Ok(())
}

/// What `PR_SET_IO_FLUSHER` sets in a thread's flags (`PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE`,
/// include/linux/sched.h), the ninth field of /proc/PID/task/TID/stat.
const IO_FLUSHER: u64 = 0x0008_0000 | 0x0010_0000;
/// What the kernel gives a FUSE mount's bdi: `max_ratio` 1 and `strict_limit` on.
const FUSE_BDI_DEFAULT: (&str, &str) = ("1", "1");

/// Every thread of process `pid`: (name, flags).
fn thread_flags(pid: u32) -> Result<Vec<(String, u64)>, Box<dyn std::error::Error>> {
    let mut v = Vec::new();
    for t in fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = fs::read_to_string(t?.path().join("stat"))?;
        // "tid (comm) state ppid pgrp session tty_nr tpgid flags ..."; comm may hold spaces.
        let (head, rest) = stat.rsplit_once(") ").ok_or("a stat line without (comm)")?;
        let comm = head.split_once(" (").map_or(head, |(_, c)| c).to_string();
        let flags = rest.split(' ').nth(6).ok_or("a short stat line")?.parse()?;
        v.push((comm, flags));
    }
    Ok(v)
}

/// Whether process `pid` has CAP_SYS_RESOURCE (bit 24 of CapEff), which PR_SET_IO_FLUSHER needs.
fn has_cap_sys_resource(pid: u32) -> Result<bool, Box<dyn std::error::Error>> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .ok_or("no CapEff")?;
    Ok(u64::from_str_radix(eff.trim(), 16)? >> 24 & 1 == 1)
}

/// The mount's bdi (`max_ratio`, `strict_limit`).
fn dirty_limits(m: &Mount) -> Result<(String, String), Box<dyn std::error::Error>> {
    use std::os::unix::fs::MetadataExt;
    let dev = fs::metadata(&m.mnt)?.dev();
    let dir = format!(
        "/sys/class/bdi/{}:{}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev)
    );
    let read = |f: &str| fs::read_to_string(format!("{dir}/{f}")).map(|s| s.trim().to_string());
    Ok((read("max_ratio")?, read("strict_limit")?))
}

#[test]
fn under_the_writeback_cache_the_daemon_is_an_io_flusher_with_a_larger_dirty_share() -> TestResult {
    // Regression (issue 12, writeback_cache, random writes at 0.34-0.46x of ext4): the kernel
    // gives a FUSE bdi 1 % of the dirty limit with strict_limit, which throttles random writers
    // to the daemon's writeback. The daemon's threads become IO flushers where they may (with
    // CAP_SYS_RESOURCE), and the share grows with strict_limit kept on either way (safe
    // without the flag: fs/src/session.rs `raise_dirty_share`).
    let _one = one_at_a_time();
    let cases: [(&[&str], bool, Option<&str>); 4] = [
        (&["writeback_cache"], true, Some("20")),
        (&["writeback_cache", "wb_max_ratio=35"], true, Some("35")),
        (&["writeback_cache", "wb_max_ratio=0"], true, None),
        (&["no_writeback_cache"], false, None),
    ];
    for (opts, flusher, ratio) in cases {
        let m = Mount::new(opts)?;
        let pid = m.pid.ok_or("no daemon pid")?;
        let able = has_cap_sys_resource(pid)?;
        let threads = thread_flags(pid)?;
        assert!(
            threads
                .iter()
                .filter(|(c, _)| c.starts_with("fuser"))
                .count()
                >= 2
                && threads.iter().any(|(c, _)| c == "cowstore-commit"),
            "{opts:?}: request threads and the committer are among {threads:?}"
        );
        let want_flusher = flusher && able;
        for (comm, flags) in &threads {
            assert_eq!(
                flags & IO_FLUSHER == IO_FLUSHER,
                want_flusher,
                "{opts:?}: thread {comm} flags {flags:#x} (CAP_SYS_RESOURCE: {able})"
            );
        }
        let want = match ratio {
            // strict_limit stays on (see fs/src/session.rs `raise_dirty_share`).
            Some(r) => (r, "1"),
            _ => FUSE_BDI_DEFAULT,
        };
        let (got_ratio, got_strict) = dirty_limits(&m)?;
        assert_eq!(
            (got_ratio.as_str(), got_strict.as_str()),
            want,
            "{opts:?}: bdi max_ratio, strict_limit (CAP_SYS_RESOURCE: {able})"
        );
        if flusher && !able {
            let log = fs::read_to_string(m.store.join("cowfs.log"))?;
            assert!(
                log.contains("cannot make the daemon an IO flusher"),
                "{opts:?}: the log says the daemon is no IO flusher:\n{log}"
            );
        }
    }
    Ok(())
}
