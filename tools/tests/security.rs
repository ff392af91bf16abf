//! Real mounts: the store is private to the user who mounts it, its files are never opened
//! through symlinks, an untrusted store directory is refused, and the control socket lives in a
//! private directory and reads requests with a bound. The hostile user is `nobody` (65534).

mod common;

use common::*;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const NOBODY: u32 = 65534;

fn mode(p: &Path) -> std::io::Result<u32> {
    Ok(fs::symlink_metadata(p)?.permissions().mode() & 0o7777)
}

fn chmod(p: &Path, m: u32) -> std::io::Result<()> {
    fs::set_permissions(p, fs::Permissions::from_mode(m))
}

fn chown(p: &Path, uid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(p, Some(uid), None)
}

/// Run a command as `nobody` (setpriv, util-linux).
fn as_nobody(cmd: &str, args: &[&str], env: &[(&str, &str)]) -> std::io::Result<Output> {
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
        cmd,
    ])
    .args(args)
    .env_remove("XDG_RUNTIME_DIR");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `cowfs mount STORE MNT` expected to fail; its stderr.
fn mount_fails(m: &Mount) -> Result<String, Box<dyn std::error::Error>> {
    let out = cowfs(&["mount", path_str(&m.store), path_str(&m.mnt)])?;
    if out.status.success() {
        // Do not leave it mounted.
        lazy_umount(&m.mnt);
        return Err(format!("mount succeeded; stderr {}", stderr(&out)).into());
    }
    Ok(stderr(&out))
}

const STORE_FILES: [&str; 6] = [
    "superblock",
    "meta.redb",
    "pool",
    "lock",
    "reserve",
    "cowfs.log",
];

#[test]
fn store_is_private_after_mkfs_and_mount() -> TestResult {
    // Regression (issue 10, defect 7): under umask 022 the store directory was 0755 and its
    // files 0644, so any local user could read every file's bytes from the pool.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let mut m = Mount::unmounted(None)?;
    nix::sys::stat::umask(old);
    // Let other users reach the store directory itself: only its own modes may keep them out.
    chmod(m.dir.path(), 0o755)?;
    assert_eq!(mode(&m.store)?, 0o700, "store directory after mkfs");
    for f in ["superblock", "meta.redb", "pool", "lock"] {
        assert_eq!(mode(&m.store.join(f))?, 0o600, "{f} after mkfs");
    }
    m.mount(&[])?;
    let secret = m.path("secret");
    fs::write(&secret, b"the secret bytes of a private file")?;
    chmod(&secret, 0o600)?;
    run_ok(&["sync", path_str(&m.mnt)])?;
    assert_eq!(mode(&m.store)?, 0o700, "store directory while mounted");
    for f in STORE_FILES {
        assert_eq!(mode(&m.store.join(f))?, 0o600, "{f} while mounted");
    }
    // The test can tell: nobody reads a 0644 file next to the store.
    let control = m.dir.path().join("readable");
    fs::write(&control, b"x")?;
    chmod(&control, 0o644)?;
    assert!(as_nobody("cat", &[path_str(&control)], &[])?
        .status
        .success());
    for f in ["pool", "meta.redb", "cowfs.log"] {
        let out = as_nobody("cat", &[path_str(&m.store.join(f))], &[])?;
        assert!(!out.status.success(), "nobody read STORE/{f}");
    }
    assert!(!as_nobody("ls", &[path_str(&m.store)], &[])?
        .status
        .success());
    m.umount()?;

    // A store made by an older version (0755/0644) is tightened by the next mount.
    chmod(&m.store, 0o755)?;
    chmod(&m.store.join("pool"), 0o644)?;
    chmod(&m.store.join("cowfs.log"), 0o644)?;
    m.mount(&[])?;
    assert_eq!(mode(&m.store)?, 0o700);
    assert_eq!(mode(&m.store.join("pool"))?, 0o600);
    assert_eq!(mode(&m.store.join("cowfs.log"))?, 0o600);
    m.umount()?;
    let log = fs::read_to_string(m.store.join("cowfs.log"))?;
    assert!(
        log.contains("pool: was mode 0644, now 0600"),
        "the daemon logs what it tightened: {log}"
    );
    Ok(())
}

#[test]
fn symlinked_store_files_are_refused() -> TestResult {
    // Regression (issue 10, defect 8): lock, reserve and the log were opened through symlinks,
    // so whoever could write the store directory made root truncate or append to any file.
    for name in ["lock", "reserve", "cowfs.log"] {
        let m = Mount::unmounted(None)?;
        let victim = m.dir.path().join("victim");
        fs::write(&victim, b"precious contents")?;
        let _ = fs::remove_file(m.store.join(name));
        std::os::unix::fs::symlink(&victim, m.store.join(name))?;
        let err = mount_fails(&m)?;
        assert!(
            err.contains(name) && err.contains("symbolic link"),
            "{name}: the refusal names the file and says why: {err}"
        );
        assert_eq!(
            fs::read(&victim)?,
            b"precious contents",
            "{name}: victim untouched"
        );
    }
    // -o log=FILE is not followed through a symlink either.
    let m = Mount::unmounted(None)?;
    let victim = m.dir.path().join("victim");
    fs::write(&victim, b"precious contents")?;
    let link = m.dir.path().join("log-link");
    std::os::unix::fs::symlink(&victim, &link)?;
    let opt = format!("log={}", path_str(&link));
    let out = cowfs(&["mount", path_str(&m.store), path_str(&m.mnt), "-o", &opt])?;
    if out.status.success() {
        lazy_umount(&m.mnt);
    }
    assert!(!out.status.success(), "log=SYMLINK must be refused");
    assert!(stderr(&out).contains("symbolic link"), "{}", stderr(&out));
    assert_eq!(fs::read(&victim)?, b"precious contents");
    Ok(())
}

#[test]
fn untrusted_store_directory_is_refused() -> TestResult {
    // Regression (issue 10, defect 8): a store directory another user owns or may write was
    // used; they could plant symlinks in it between our checks.
    let m = Mount::unmounted(None)?;
    chown(&m.store, NOBODY)?;
    let err = mount_fails(&m)?;
    assert!(
        err.contains(path_str(&m.store)) && err.contains("owned by uid 65534"),
        "{err}"
    );
    chown(&m.store, 0)?;
    for (m_, who) in [(0o770, "its group"), (0o703, "others")] {
        chmod(&m.store, m_)?;
        let err = mount_fails(&m)?;
        assert!(err.contains("writable by") && err.contains(who), "{err}");
        assert_eq!(mode(&m.store)?, m_, "a refused directory is not changed");
    }
    // fsck refuses it too (operational error).
    let out = cowfs(&["fsck", path_str(&m.store)])?;
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("writable by others"),
        "{}",
        stderr(&out)
    );
    // A symlink to a good store is refused: it names the real path.
    chmod(&m.store, 0o700)?;
    let link = m.dir.path().join("store-link");
    std::os::unix::fs::symlink(&m.store, &link)?;
    let out = cowfs(&["mount", path_str(&link), path_str(&m.mnt)])?;
    if out.status.success() {
        lazy_umount(&m.mnt);
    }
    assert!(!out.status.success());
    assert!(stderr(&out).contains("symbolic link"), "{}", stderr(&out));
    Ok(())
}

/// The control socket of the mount at `mnt` (as the daemon, running as root, names it).
fn socket_of(mnt: &Path) -> std::io::Result<PathBuf> {
    let dev = fs::metadata(mnt)?.dev();
    Ok(PathBuf::from(format!(
        "/run/cowfs/dev-{}-{}.sock",
        libc::major(dev),
        libc::minor(dev)
    )))
}

#[test]
fn control_socket_directory_is_private() -> TestResult {
    // Regression (issue 10, defect 13): the control socket's directory fell back to a
    // predictable /tmp/cowfs-UID that was used even when someone else had made it.
    let m = Mount::new(&[])?;
    let sock = socket_of(&m.mnt)?;
    let dir = Path::new("/run/cowfs");
    let md = fs::symlink_metadata(dir)?;
    assert!(
        md.is_dir() && md.uid() == 0,
        "/run/cowfs is root's directory"
    );
    assert_eq!(mode(dir)?, 0o700);
    assert_eq!(mode(&sock)?, 0o600, "the socket itself");

    // A user's runtime directory made by someone else (here root, for nobody) is refused by
    // the client with a message, before it connects to anything in it.
    let tmp = tempfile::tempdir()?;
    chmod(tmp.path(), 0o755)?;
    let xdg = tmp.path().join("xdg");
    fs::create_dir(&xdg)?;
    chown(&xdg, NOBODY)?;
    let planted = xdg.join("cowfs");
    fs::create_dir(&planted)?;
    chmod(&planted, 0o755)?;
    let stats_as_nobody = || {
        let env = [("XDG_RUNTIME_DIR", path_str(&xdg))];
        as_nobody(COWFS, &["stats", "/"], &env)
    };
    let out = stats_as_nobody()?;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("refusing control directory") && err.contains("owned by uid 0"),
        "{err}"
    );
    // ... and so is one of theirs that others may write.
    chown(&planted, NOBODY)?;
    chmod(&planted, 0o777)?;
    let out = stats_as_nobody()?;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("writable by others"),
        "{}",
        stderr(&out)
    );
    // A private one of theirs is accepted (there is just no mount to find).
    chmod(&planted, 0o700)?;
    let out = stats_as_nobody()?;
    assert!(
        stderr(&out).contains("is not a cowfs mount"),
        "{}",
        stderr(&out)
    );
    Ok(())
}

fn rss_kib(pid: u32) -> Result<u64, Box<dyn std::error::Error>> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmRSS".into())
}

#[test]
fn overlong_control_request_is_rejected() -> TestResult {
    // Regression (issue 10, defect 13): the daemon read control requests without a bound, so
    // one endless line grew its memory without limit and held up every other request.
    let m = Mount::new(&[])?;
    let pid = m.pid.ok_or("no daemon pid")?;
    let sock = socket_of(&m.mnt)?;
    let before = rss_kib(pid)?;

    // A peer that connects and says nothing must not hold up anyone else.
    let _silent = UnixStream::connect(&sock)?;
    let t = Instant::now();
    m.stats()?;
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "stats waited for a silent peer"
    );

    let mut conn = UnixStream::connect(&sock)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let writer = {
        let mut w = conn.try_clone()?;
        std::thread::spawn(move || {
            let chunk = vec![b'a'; 1 << 20];
            let mut sent = 0u64;
            // Stops when the daemon closes the connection (EPIPE / ECONNRESET).
            while sent < 256 << 20 {
                if w.write_all(&chunk).is_err() {
                    break;
                }
                sent += chunk.len() as u64;
            }
            sent
        })
    };
    let mut reply = Vec::new();
    let t = Instant::now();
    let _ = conn.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply).into_owned();
    assert!(
        reply.contains("request longer than 16384 bytes"),
        "reply {reply:?}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "took {:?}",
        t.elapsed()
    );
    let sent = writer.join().map_err(|_| "writer panicked")?;
    assert!(
        sent < 256 << 20,
        "the daemon kept reading: {sent} bytes taken"
    );
    let grown = rss_kib(pid)?.saturating_sub(before);
    assert!(grown < 8 << 10, "daemon RSS grew by {grown} KiB");
    // Still answering.
    m.stats()?;
    Ok(())
}
