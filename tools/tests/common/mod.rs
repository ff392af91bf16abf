//! Real-mount test harness: a store in a fresh temp dir, mounted by the built `cowfs` binary,
//! and a guard that always unmounts and reaps the daemon, even when the test fails.

#![allow(dead_code)]

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Once;
use std::time::{Duration, Instant};

pub use cowfs_test_support::*;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

pub const COWFS: &str = env!("CARGO_BIN_EXE_cowfs");

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Daemons detach from `cowfs mount`; as a subreaper this test process inherits them, so it can
/// reap them (and SIGKILL tests can wait for a real exit).
fn become_subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            eprintln!("warning: cannot become a child subreaper: {e}");
        }
    });
}

pub fn cowfs(args: &[&str]) -> io::Result<Output> {
    Command::new(COWFS).args(args).output()
}

pub fn run_ok(args: &[&str]) -> Result<String, String> {
    let out = cowfs(args).map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "cowfs {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A store and its mount. Dropping it unmounts (lazily if need be), kills and reaps the daemon.
pub struct Mount {
    pub dir: tempfile::TempDir,
    pub store: PathBuf,
    pub mnt: PathBuf,
    pub pid: Option<u32>,
    /// Extra mounts to detach on drop, innermost last (e.g. a tmpfs holding the store).
    pub below: Vec<PathBuf>,
}

impl Mount {
    /// mkfs a store in a new temp dir (or under `host`, if given) and mount it with `opts`.
    pub fn new(opts: &[&str]) -> Result<Mount, Box<dyn std::error::Error>> {
        Mount::with_store_in(None, opts)
    }

    pub fn with_store_in(
        host: Option<&Path>,
        opts: &[&str],
    ) -> Result<Mount, Box<dyn std::error::Error>> {
        let mut m = Mount::unmounted(host)?;
        m.mount(opts)?;
        Ok(m)
    }

    /// mkfs a store in a new temp dir (or under `host`), not mounted yet.
    pub fn unmounted(host: Option<&Path>) -> Result<Mount, Box<dyn std::error::Error>> {
        become_subreaper();
        let dir = tempfile::Builder::new().prefix("cowfs-test-").tempdir()?;
        let store = host.map_or_else(|| dir.path().join("store"), |h| h.join("store"));
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt)?;
        run_ok(&["mkfs", path_str(&store)])?;
        Ok(Mount {
            dir,
            store,
            mnt,
            pid: None,
            below: Vec::new(),
        })
    }

    pub fn mount(&mut self, opts: &[&str]) -> Result<(), Box<dyn std::error::Error>> {
        self.mount_with(&[], opts)
    }

    /// Mount with extra arguments to `cowfs mount` (such as `--lower DIR`) and `-o opts`.
    /// `COWFS_TEST_OPTS` (comma-separated) comes before `opts`, which win where they disagree:
    /// `COWFS_TEST_OPTS=no_writeback_cache` runs the tests without the writeback cache.
    pub fn mount_with(
        &mut self,
        extra: &[&str],
        opts: &[&str],
    ) -> Result<(), Box<dyn std::error::Error>> {
        let mut args = vec!["mount"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[path_str(&self.store), path_str(&self.mnt)]);
        let from_env = std::env::var("COWFS_TEST_OPTS").unwrap_or_default();
        let opts: Vec<&str> = from_env
            .split(',')
            .filter(|o| !o.is_empty())
            .chain(opts.iter().copied())
            .collect();
        let joined = opts.join(",");
        if !opts.is_empty() {
            args.push("-o");
            args.push(&joined);
        }
        run_ok(&args)?;
        let stats = self.stats()?;
        self.pid = stats["pid"].as_u64().map(|p| p as u32);
        Ok(())
    }

    pub fn stats(&self) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
        let out = run_ok(&["stats", "--json", path_str(&self.mnt)])?;
        Ok(serde_json::from_str(&out)?)
    }

    pub fn counter(&self, name: &str) -> Result<u64, Box<dyn std::error::Error>> {
        self.stats()?[name]
            .as_u64()
            .ok_or_else(|| format!("no counter {name}").into())
    }

    /// SIGKILL the daemon and reap it; the mount is left behind (ENOTCONN) for the caller to
    /// look at or detach (`lazy_umount`).
    pub fn kill_daemon(&mut self) -> Result<(), Box<dyn std::error::Error>> {
        self.signal_daemon(nix::sys::signal::Signal::SIGKILL)
    }

    /// Send the daemon `sig` and reap it (it exits on SIGTERM too, unmounting first).
    pub fn signal_daemon(
        &mut self,
        sig: nix::sys::signal::Signal,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let pid = self.pid.take().ok_or("no daemon pid")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig)?;
        reap(pid, Duration::from_secs(10))?;
        Ok(())
    }

    /// `cowfs umount`, which returns once the daemon has exited; then reap it.
    pub fn umount(&mut self) -> Result<(), Box<dyn std::error::Error>> {
        run_ok(&["umount", path_str(&self.mnt)])?;
        if let Some(pid) = self.pid.take() {
            reap(pid, Duration::from_secs(5))?;
        }
        Ok(())
    }

    pub fn remount(&mut self, opts: &[&str]) -> Result<(), Box<dyn std::error::Error>> {
        self.umount()?;
        self.mount(opts)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Bytes of host disk the store's files take (st_blocks), what `du` would say.
    pub fn store_disk_bytes(&self) -> io::Result<u64> {
        let mut total = 0;
        for e in fs::read_dir(&self.store)? {
            total += e?.metadata()?.blocks() * 512;
        }
        Ok(total)
    }
}

/// Wait for a daemon (our child, thanks to the subreaper) to exit and reap it.
pub fn reap(pid: u32, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        match waitpid(
            Pid::from_raw(pid as i32),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        ) {
            Ok(nix::sys::wait::WaitStatus::StillAlive) => {}
            // Exited and reaped, or not our child (no subreaper): either way it is gone or
            // will be reaped by someone else.
            Ok(_) | Err(_) => return Ok(()),
        }
        if Instant::now() > deadline {
            return Err(format!("daemon {pid} did not exit within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn lazy_umount(p: &Path) {
    let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.take() {
            lazy_umount(&self.mnt);
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let _ = reap(pid, Duration::from_secs(10));
        }
        for b in self.below.iter().rev() {
            lazy_umount(b);
        }
    }
}

/// The errno of an I/O result, for asserting on error paths.
pub fn errno<T>(r: io::Result<T>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

/// Unmount `m` and check its store with `cowfs fsck`: clean, or the test fails with fsck's output.
pub fn fsck_clean(m: &mut Mount) -> TestResult {
    m.umount()?;
    let store = m.store.to_string_lossy().into_owned();
    let out = cowfs(&["fsck", &store])?;
    assert!(
        out.status.success(),
        "fsck: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
