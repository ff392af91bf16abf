//! Real mounts: `cowfs sync` commits (sync(1) cannot reach a FUSE daemon), and a plain
//! `umount` followed at once by a mount of the same store succeeds.

mod common;

use common::*;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// SIGKILL the daemon, reap it, and detach what is left of its mount.
fn kill_daemon(m: &mut Mount) -> TestResult {
    m.kill_daemon()?;
    lazy_umount(&m.mnt);
    Ok(())
}

#[test]
fn cowfs_sync_commits() -> TestResult {
    // Regression (issue 10, defect 6): sync(1) never reaches cowfs (the kernel sends
    // FUSE_SYNCFS only to virtiofs), and there was no other way to commit a mount on demand.
    // commit=0: nothing but fsync, `cowfs sync` and unmount commits.
    let mut m = Mount::new(&["commit=0"])?;
    let data = pattern(7, 300_000);
    fs::write(m.path("synced"), &data)?; // no fsync
    let commits = m.counter("commits")?;
    let out = cowfs(&["sync", path_str(&m.mnt)])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(m.counter("commits")? > commits, "cowfs sync made a commit");
    // Written after the sync and never committed: must be gone after the kill, which shows
    // the kill really loses what was not committed (and sync(1) commits nothing).
    fs::write(m.path("unsynced"), b"lost")?;
    let st = Command::new("sync").status()?;
    assert!(st.success());
    kill_daemon(&mut m)?;
    m.mount(&[])?;
    assert_eq!(
        fs::read(m.path("synced"))?,
        data,
        "the synced file survived"
    );
    assert!(
        !m.path("unsynced").exists(),
        "a file written after the last commit cannot survive a kill"
    );
    m.umount()?;

    // Not a cowfs mount: exit 1 with a message.
    let out = cowfs(&["sync", "/"])?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a cowfs mount"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The help says what sync(1) does not do.
    let help = run_ok(&["sync", "--help"])?;
    assert!(help.contains("sync(1)"), "{help}");
    let mount_help = run_ok(&["mount", "--help"])?;
    assert!(
        !mount_help.contains("fsync, sync and unmount"),
        "mount --help must not claim sync(1) commits"
    );
    Ok(())
}

#[test]
fn umount_then_mount_at_once_succeeds() -> TestResult {
    // Regression (issue 10, defect 22): after a plain `umount MOUNTPOINT` the kernel returns
    // before the daemon has committed and released the store, so a mount right after failed
    // with "store is in use by process N" about half the time.
    let mut m = Mount::new(&[])?;
    for round in 0..10 {
        // Some uncommitted data, so the daemon has a commit to make after the umount.
        write_pattern_nosync(&m.path(&format!("f{round}")), round, 8 << 20)?;
        let old = m.pid.take().ok_or("no daemon pid")?;
        let st = Command::new("umount").arg(&m.mnt).status()?;
        assert!(st.success(), "round {round}: umount");
        let t = Instant::now();
        let out = cowfs(&["mount", path_str(&m.store), path_str(&m.mnt)])?;
        assert!(
            out.status.success(),
            "round {round}: mount right after umount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(t.elapsed() < Duration::from_secs(30));
        reap(old, Duration::from_secs(10))?;
        m.pid = m.stats()?["pid"].as_u64().map(|p| p as u32);
    }
    for round in 0..10 {
        check_pattern(&m.path(&format!("f{round}")), round, 8 << 20, &[])?;
    }
    m.umount()?;
    Ok(())
}

fn write_pattern_nosync(path: &Path, seed: u64, size: u64) -> std::io::Result<()> {
    fs::write(path, pattern(seed, size as usize))
}

#[test]
fn mount_of_a_store_mounted_elsewhere_fails_at_once() -> TestResult {
    // Regression (issue 10, defect 22): waiting for a releasing daemon must not turn a real
    // conflict into a 30 s wait.
    let m = Mount::new(&[])?;
    let other = m.dir.path().join("mnt2");
    fs::create_dir(&other)?;
    let t = Instant::now();
    let out = cowfs(&["mount", path_str(&m.store), path_str(&other)])?;
    if out.status.success() {
        lazy_umount(&other);
    }
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let pid = m.pid.ok_or("no pid")?;
    assert!(err.contains(&format!("in use by process {pid}")), "{err}");
    assert!(!err.contains("waiting"), "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    Ok(())
}
