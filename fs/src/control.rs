//! The control channel between a mount's daemon and the `cowfs` command: a Unix socket in the
//! runtime directory named after the mount's device number (what `stat MOUNTPOINT` shows as
//! st_dev), answering one JSON line of [`Stats`] (which includes the daemon's pid, so
//! `cowfs umount` can wait for the daemon to exit).

use crate::stats::Stats;
use crate::sys;
use log::{debug, warn};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where control sockets live: /run/cowfs for root, else the user's runtime directory.
pub fn runtime_dir() -> PathBuf {
    let uid = sys::geteuid();
    if uid == 0 {
        return PathBuf::from("/run/cowfs");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => PathBuf::from(d).join("cowfs"),
        None => PathBuf::from(format!("/tmp/cowfs-{uid}")),
    }
}

/// The socket of the mount whose device is `major:minor`.
pub fn socket_path(major: u32, minor: u32) -> PathBuf {
    runtime_dir().join(format!("dev-{major}-{minor}.sock"))
}

/// `major:minor` of the FUSE mount at `mountpoint`, from /proc/self/mountinfo (so the daemon
/// can learn it without a `stat` that it would have to answer itself).
pub fn mount_dev(mountpoint: &Path) -> io::Result<(u32, u32)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let want = mountpoint.as_os_str().to_string_lossy().into_owned();
    let mut found = None;
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(dev), Some(mp), Some(fstype)) =
            (fields.get(2), fields.get(4), fields.get(sep + 1))
        else {
            continue;
        };
        if !fstype.starts_with("fuse") || unescape(mp) != want {
            continue;
        }
        if let Some((a, b)) = dev.split_once(':') {
            if let (Ok(a), Ok(b)) = (a.parse(), b.parse()) {
                // The last match is the mount on top.
                found = Some((a, b));
            }
        }
    }
    found.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no FUSE mount at {want}")))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let digits = std::str::from_utf8(&b[i + 1..i + 4]).ok();
            if let Some(v) = digits.and_then(|d| u8::from_str_radix(d, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The daemon's end: answers stats requests until the process exits; the socket file is removed
/// when this is dropped.
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
}

impl ControlServer {
    pub fn start(
        dev: (u32, u32),
        stats: impl Fn() -> Stats + Send + 'static,
    ) -> io::Result<ControlServer> {
        let dir = runtime_dir();
        std::fs::create_dir_all(&dir)?;
        let path = socket_path(dev.0, dev.1);
        // A socket left by a daemon that was killed: device numbers are reused.
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(&path)?;
        std::thread::Builder::new()
            .name("cowfs-control".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    match conn {
                        Ok(c) => {
                            if let Err(e) = serve_one(c, &stats) {
                                debug!("control connection: {e}");
                            }
                        }
                        Err(e) => warn!("control socket: {e}"),
                    }
                }
            })?;
        Ok(ControlServer { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve_one(conn: UnixStream, stats: &impl Fn() -> Stats) -> io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    let mut out = &conn;
    match line.trim() {
        "stats" => {
            let mut s = serde_json::to_string(&stats()).map_err(io::Error::other)?;
            s.push('\n');
            out.write_all(s.as_bytes())
        }
        other => out.write_all(format!("{{\"error\":\"unknown request {other:?}\"}}\n").as_bytes()),
    }
}

/// Why the daemon of a mount could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}: {1}")]
    Stat(PathBuf, io::Error),
    #[error("{0} is not a cowfs mount (no control socket {1})")]
    NotCowfs(PathBuf, PathBuf),
    #[error("the daemon of {0} is not running (stale control socket {1})")]
    DaemonGone(PathBuf, PathBuf),
    #[error("talking to the daemon of {0}: {1}")]
    Io(PathBuf, io::Error),
}

/// Ask the daemon serving `mountpoint` for its stats.
pub fn query(mountpoint: &Path) -> Result<Stats, QueryError> {
    let mp = mountpoint.to_path_buf();
    let md = std::fs::metadata(mountpoint).map_err(|e| QueryError::Stat(mp.clone(), e))?;
    let dev = md.dev();
    let path = socket_path(libc::major(dev), libc::minor(dev));
    let conn = match UnixStream::connect(&path) {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(QueryError::NotCowfs(mp, path))
        }
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            return Err(QueryError::DaemonGone(mp, path))
        }
        Err(e) => return Err(QueryError::Io(mp, e)),
    };
    let io_err = |e: io::Error| QueryError::Io(mp.clone(), e);
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io_err)?;
    (&conn).write_all(b"stats\n").map_err(io_err)?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line).map_err(io_err)?;
    serde_json::from_str(&line)
        .map_err(|e| io_err(io::Error::other(format!("bad reply {line:?}: {e}"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape(r"/mnt/x\134y"), r"/mnt/x\y");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape(r"/end\04"), r"/end\04");
    }
}
