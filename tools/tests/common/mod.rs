//! Real-mount test harness: a store in a fresh temp dir, mounted by the built `cowfs` binary,
//! and a guard that always unmounts and reaps the daemon, even when the test fails.

#![allow(dead_code)]

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Once;
use std::time::{Duration, Instant};

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

fn s(p: &Path) -> &str {
    p.to_str().unwrap_or("<non-utf8>")
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
        run_ok(&["mkfs", s(&store)])?;
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
    pub fn mount_with(
        &mut self,
        extra: &[&str],
        opts: &[&str],
    ) -> Result<(), Box<dyn std::error::Error>> {
        let mut args = vec!["mount"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[s(&self.store), s(&self.mnt)]);
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
        let out = run_ok(&["stats", "--json", s(&self.mnt)])?;
        Ok(serde_json::from_str(&out)?)
    }

    pub fn counter(&self, name: &str) -> Result<u64, Box<dyn std::error::Error>> {
        self.stats()?[name]
            .as_u64()
            .ok_or_else(|| format!("no counter {name}").into())
    }

    /// `cowfs umount`, which returns once the daemon has exited; then reap it.
    pub fn umount(&mut self) -> Result<(), Box<dyn std::error::Error>> {
        run_ok(&["umount", s(&self.mnt)])?;
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

/// Deterministic file content: byte `i` of a file made with `seed`.
pub fn pattern(seed: u64, off: u64, len: usize) -> Vec<u8> {
    (off..off + len as u64)
        .map(|i| {
            let w = (i / 8).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed;
            (w >> ((i % 8) * 8)) as u8
        })
        .collect()
}

/// Write `size` bytes of `pattern(seed)` in 1 MiB chunks.
pub fn write_pattern(path: &Path, seed: u64, size: u64) -> io::Result<()> {
    use std::io::Write;
    let mut f = fs::File::create(path)?;
    let mut off = 0;
    while off < size {
        let n = (size - off).min(1 << 20) as usize;
        f.write_all(&pattern(seed, off, n))?;
        off += n as u64;
    }
    f.sync_all()
}

/// Check a file is `pattern(seed)` except for `patches` (offset, bytes).
pub fn check_pattern(
    path: &Path,
    seed: u64,
    size: u64,
    patches: &[(u64, &[u8])],
) -> Result<(), String> {
    use std::io::Read;
    let mut f = fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    if len != size {
        return Err(format!("{}: size {len}, want {size}", path.display()));
    }
    let mut off = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    while off < size {
        let n = (size - off).min(1 << 20) as usize;
        f.read_exact(&mut buf[..n]).map_err(|e| e.to_string())?;
        let mut want = pattern(seed, off, n);
        for (at, bytes) in patches {
            for (k, b) in bytes.iter().enumerate() {
                let p = at + k as u64;
                if p >= off && p < off + n as u64 {
                    want[(p - off) as usize] = *b;
                }
            }
        }
        if buf[..n] != want[..] {
            let first = buf[..n]
                .iter()
                .zip(&want)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Err(format!(
                "{}: differs at byte {}",
                path.display(),
                off + first as u64
            ));
        }
        off += n as u64;
    }
    Ok(())
}

/// The errno of an I/O result, for asserting on error paths.
pub fn errno<T>(r: io::Result<T>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn cname(n: &str) -> io::Result<CString> {
    CString::new(n).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn ret(rc: libc::ssize_t) -> io::Result<usize> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

/// setxattr(2).
pub fn setxattr(p: &Path, name: &str, value: &[u8], flags: i32) -> io::Result<()> {
    let (p, n) = (cpath(p)?, cname(name)?);
    // SAFETY: both strings are NUL-terminated and live for the call; `value` is a live slice of
    // `value.len()` bytes.
    let rc = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    ret(rc as libc::ssize_t).map(|_| ())
}

/// getxattr(2) into a buffer of `size` bytes (0: ask for the size); returns the length.
pub fn getxattr(p: &Path, name: &str, buf: &mut [u8]) -> io::Result<usize> {
    let (p, n) = (cpath(p)?, cname(name)?);
    let ptr = if buf.is_empty() {
        std::ptr::null_mut()
    } else {
        buf.as_mut_ptr().cast()
    };
    // SAFETY: the strings are NUL-terminated; `ptr` is null with size 0, or `buf` of `buf.len()`
    // writable bytes.
    ret(unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), ptr, buf.len()) })
}

/// listxattr(2) into a buffer of `buf.len()` bytes (0: ask for the size).
pub fn listxattr(p: &Path, buf: &mut [u8]) -> io::Result<usize> {
    let p = cpath(p)?;
    let ptr = if buf.is_empty() {
        std::ptr::null_mut()
    } else {
        buf.as_mut_ptr().cast()
    };
    // SAFETY: `p` is NUL-terminated; `ptr` is null with size 0, or `buf` of `buf.len()` bytes.
    ret(unsafe { libc::listxattr(p.as_ptr(), ptr, buf.len()) })
}

/// removexattr(2).
pub fn removexattr(p: &Path, name: &str) -> io::Result<()> {
    let (p, n) = (cpath(p)?, cname(name)?);
    // SAFETY: both strings are NUL-terminated and live for the call.
    ret(unsafe { libc::removexattr(p.as_ptr(), n.as_ptr()) } as libc::ssize_t).map(|_| ())
}
