//! The control channel between a mount's daemon and the `cowfs` command: a Unix socket in a
//! private runtime directory (0700, ours), named after the mount's device number (what
//! `stat MOUNTPOINT` shows as st_dev). A request is one short line: `stats` answers one JSON
//! line of [`Stats`] (which includes the daemon's pid, so `cowfs umount` can wait for the daemon
//! to exit); `sync` commits the store and answers `{"ok":true}` or `{"error":"..."}` once the
//! commit is durable or has failed; `remount ro` / `remount rw` make the store read-only (and
//! commit it) or writable again, answering the same way (what `mount -o remount,ro` asks after
//! the kernel's remount); `progress ID` answers the last report of the snapshot ioctl that
//! asked for id ID ([`OpProgress`]), or `null`. A line that is a JSON object is a report request
//! ([`crate::live::Request`]: du, inspect, fsck of the last committed state), answered by a
//! stream of JSON lines ([`crate::live::Line`]) that ends with an `end` or `error` line.
//! Only root and the daemon's own user may ask (SO_PEERCRED); requests and reply lines are read
//! with a hard byte bound, requests also with a deadline.

use crate::live::{Line, ReportHandler, Request};
use crate::progress::OpProgress;
use crate::stats::Stats;
use crate::sys;
use log::{debug, warn};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest request line the daemon reads (a report request may carry a path of up to
/// PATH_MAX bytes, JSON-escaped).
pub const MAX_REQUEST: usize = 16 << 10;
/// The longest reply line a client reads.
pub const MAX_REPLY: usize = 1 << 20;
/// How long the daemon waits for a request line.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// How long the daemon waits for a client to take a line of a report (a report holds a
/// snapshot of the last commit until it is sent).
const REPORT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections served at once; more are answered "busy".
const MAX_CONNECTIONS: usize = 8;

/// Where control sockets live: /run/cowfs for root, else the user's runtime directory
/// ($XDG_RUNTIME_DIR/cowfs, or /tmp/cowfs-UID without one). The directory must be ours and
/// private (see [`check_private_dir`]).
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

/// Check that `dir` is a directory (not a symlink) owned by the effective user that no other
/// user may write; one that others may only read or search is set to 0700. Anything else is
/// refused (`PermissionDenied`, naming the directory and what is wrong): in a directory someone
/// else controls, they could stand in for the daemon's socket.
pub fn check_private_dir(dir: &Path) -> io::Result<()> {
    let md = std::fs::symlink_metadata(dir)?;
    let refuse = |what: String| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("refusing control directory {}: {what}", dir.display()),
        )
    };
    if md.file_type().is_symlink() {
        return Err(refuse("it is a symbolic link".into()));
    }
    if !md.is_dir() {
        return Err(refuse("not a directory".into()));
    }
    let me = sys::geteuid();
    if md.uid() != me {
        return Err(refuse(format!(
            "owned by uid {}, not by uid {me}",
            md.uid()
        )));
    }
    let mode = md.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(refuse(format!(
            "writable by others (mode {mode:04o}); remove it or chmod 700 it"
        )));
    }
    if mode != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        warn!("{}: was mode {mode:04o}, now 0700", dir.display());
    }
    Ok(())
}

/// Create the runtime directory 0700 if it is missing (its parent must exist), then check it.
fn make_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
            return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display())))
        }
        _ => {}
    }
    check_private_dir(dir)
}

/// Whether a peer of uid `uid` may talk to us (or we to it): root, or our own user.
fn trusted_uid(uid: u32) -> bool {
    uid == 0 || uid == sys::geteuid()
}

fn peer_uid(conn: &UnixStream) -> io::Result<u32> {
    Ok(rustix::net::sockopt::socket_peercred(conn)?.uid.as_raw())
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
pub(crate) fn unescape(s: &str) -> String {
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

/// What the daemon answers with.
pub struct Handlers {
    /// The `stats` reply.
    pub stats: Box<dyn Fn() -> Stats + Send + Sync>,
    /// `sync`: commit the store now; `Err` carries the error text for the client.
    pub sync: Box<dyn Fn() -> Result<(), String> + Send + Sync>,
    /// Report requests (du, inspect, fsck): writes the reply's lines, the last one `end` or
    /// `error`, to the sink; `Err` only when the sink failed.
    pub report: ReportHandler,
    /// `remount ro` (true) / `remount rw`: make the store read-only, committing it, or writable.
    pub set_read_only: Box<dyn Fn(bool) -> Result<(), String> + Send + Sync>,
    /// `progress ID`: the last report of the operation published under ID.
    pub progress: Box<dyn Fn(u32) -> Option<OpProgress> + Send + Sync>,
}

/// The daemon's end: answers requests until the process exits; the socket file is removed
/// when this is dropped.
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    /// (dev, ino) of the socket file this daemon bound: the kernel reuses a mount's device
    /// number as soon as it is unmounted, so by the time this daemon has closed its store the
    /// path may be the socket of a newer mount, which must not be removed.
    bound: Option<(u64, u64)>,
}

impl ControlServer {
    pub fn start(dev: (u32, u32), handlers: Handlers) -> io::Result<ControlServer> {
        make_private_dir(&runtime_dir())?;
        let path = socket_path(dev.0, dev.1);
        // A socket left by a daemon that was killed: device numbers are reused.
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let bound = socket_id(&path);
        let handlers = Arc::new(handlers);
        let active = Arc::new(AtomicUsize::new(0));
        std::thread::Builder::new()
            .name("cowfs-control".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    match conn {
                        Ok(c) => accept(c, &handlers, &active),
                        Err(e) => warn!("control socket: {e}"),
                    }
                }
            })?;
        Ok(ControlServer { path, bound })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn socket_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        if self.bound.is_some() && socket_id(&self.path) == self.bound {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Check the peer and serve it on a thread of its own (a `sync` may take a while, and must not
/// hold up `stats` or `umount`), at most [`MAX_CONNECTIONS`] at once.
fn accept(conn: UnixStream, handlers: &Arc<Handlers>, active: &Arc<AtomicUsize>) {
    match peer_uid(&conn) {
        Ok(uid) if trusted_uid(uid) => {}
        Ok(uid) => {
            warn!("control socket: refused a request from uid {uid}");
            let _ = (&conn).write_all(error_line("permission denied").as_bytes());
            return;
        }
        Err(e) => {
            warn!("control socket: peer credentials: {e}");
            return;
        }
    }
    if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
        active.fetch_sub(1, Ordering::SeqCst);
        let _ = (&conn).write_all(error_line("busy").as_bytes());
        return;
    }
    let (h, a) = (handlers.clone(), active.clone());
    let spawned = std::thread::Builder::new()
        .name("cowfs-control-conn".into())
        .spawn(move || {
            if let Err(e) = serve_one(&conn, &h) {
                debug!("control connection: {e}");
            }
            a.fetch_sub(1, Ordering::SeqCst);
        });
    if let Err(e) = spawned {
        active.fetch_sub(1, Ordering::SeqCst);
        warn!("control socket: {e}");
    }
}

fn ok_or_error(r: Result<(), String>) -> String {
    match r {
        Ok(()) => "{\"ok\":true}\n".to_string(),
        Err(e) => error_line(&e),
    }
}

fn error_line(msg: &str) -> String {
    let mut s = serde_json::json!({ "error": msg }).to_string();
    s.push('\n');
    s
}

/// Read one line of at most `max` bytes before `deadline`; `None` if it is longer.
fn read_line_bounded(
    conn: &UnixStream,
    max: usize,
    deadline: Option<Instant>,
) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no complete line in time",
                ));
            }
            conn.set_read_timeout(Some(left))?;
        }
        let want = buf.len().min(max + 1 - line.len());
        let n = match (&*conn).read(&mut buf[..want]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed mid-line",
            ));
        }
        if let Some(nl) = buf[..n].iter().position(|&b| b == b'\n') {
            line.extend_from_slice(&buf[..nl]);
            return Ok((line.len() <= max).then_some(line));
        }
        line.extend_from_slice(&buf[..n]);
        if line.len() > max {
            return Ok(None);
        }
    }
}

fn serve_one(conn: &UnixStream, h: &Handlers) -> io::Result<()> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let reply = match read_line_bounded(conn, MAX_REQUEST, Some(deadline))? {
        None => error_line(&format!("request longer than {MAX_REQUEST} bytes")),
        // A report request is JSON: an object, or a bare string for those without arguments.
        Some(line) if matches!(line.first(), Some(b'{' | b'"')) => {
            match serde_json::from_slice::<Request>(&line) {
                Ok(req) => return serve_report(conn, h, req),
                Err(e) => error_line(&format!("bad report request: {e}")),
            }
        }
        Some(line) => match String::from_utf8_lossy(&line).trim() {
            "stats" => {
                let mut s = serde_json::to_string(&(h.stats)()).map_err(io::Error::other)?;
                s.push('\n');
                s
            }
            "sync" => ok_or_error((h.sync)()),
            "remount ro" => ok_or_error((h.set_read_only)(true)),
            "remount rw" => ok_or_error((h.set_read_only)(false)),
            other => match other.strip_prefix("progress ").map(str::parse::<u32>) {
                Some(Ok(id)) => {
                    let mut s =
                        serde_json::to_string(&(h.progress)(id)).map_err(io::Error::other)?;
                    s.push('\n');
                    s
                }
                _ => error_line(&format!("unknown request {other:?}")),
            },
        },
    };
    let mut out = conn;
    out.write_all(reply.as_bytes())?;
    // Whatever the peer still sends is not read: closing drops it.
    let _ = conn.shutdown(std::net::Shutdown::Both);
    Ok(())
}

/// Answer a report request, one JSON line at a time (each bounded by [`MAX_REPLY`]: a longer
/// one is replaced by an error line, which ends the report).
fn serve_report(conn: &UnixStream, h: &Handlers, req: Request) -> io::Result<()> {
    conn.set_write_timeout(Some(REPORT_WRITE_TIMEOUT))?;
    let mut out = conn;
    let mut sink = |line: &Line| -> io::Result<()> {
        let mut s = serde_json::to_string(line).map_err(io::Error::other)?;
        if s.len() > MAX_REPLY {
            let e = format!("a line of the report is longer than {MAX_REPLY} bytes");
            out.write_all(error_line(&e).as_bytes())?;
            return Err(io::Error::other(e));
        }
        s.push('\n');
        out.write_all(s.as_bytes())
    };
    let r = (h.report)(req, &mut sink);
    let _ = conn.shutdown(std::net::Shutdown::Both);
    r
}

/// Why the daemon of a mount could not be asked, or what it answered.
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
    #[error("the daemon of {0}: {1}")]
    Failed(PathBuf, String),
}

/// Send `request` to the daemon serving `mountpoint`; its reply line, read with a bound of
/// [`MAX_REPLY`] bytes and `timeout` (`None`: as long as it takes).
fn request(
    mountpoint: &Path,
    request: &str,
    timeout: Option<Duration>,
) -> Result<String, QueryError> {
    let conn = send(mountpoint, request)?;
    let deadline = timeout.map(|t| Instant::now() + t);
    read_reply(mountpoint, &conn, deadline)
}

/// One reply line of at most [`MAX_REPLY`] bytes.
fn read_reply(
    mountpoint: &Path,
    conn: &UnixStream,
    deadline: Option<Instant>,
) -> Result<String, QueryError> {
    let io_err = |e: io::Error| QueryError::Io(mountpoint.to_path_buf(), e);
    let line = read_line_bounded(conn, MAX_REPLY, deadline)
        .map_err(io_err)?
        .ok_or_else(|| {
            io_err(io::Error::other(format!(
                "reply longer than {MAX_REPLY} bytes"
            )))
        })?;
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Ask the daemon of the mount that `path` is in (its mountpoint, or any file or directory in
/// it: the socket is found by the st_dev of `path`) for a report; `on_line` gets each line of
/// the reply but the last. Ends with the daemon's `error` line as [`QueryError::Failed`].
pub fn report(
    path: &Path,
    req: &Request,
    mut on_line: impl FnMut(Line) -> Result<(), QueryError>,
) -> Result<(), QueryError> {
    let bad = |e: String| QueryError::Io(path.to_path_buf(), io::Error::other(e));
    let line = serde_json::to_string(req).map_err(|e| bad(e.to_string()))?;
    let conn = send(path, &line)?;
    let mut lines = io::BufReader::new(&conn);
    loop {
        let line = read_buffered_line(&mut lines, MAX_REPLY)
            .map_err(|e| QueryError::Io(path.to_path_buf(), e))?;
        if let Some(e) = reply_error(&line) {
            return Err(QueryError::Failed(path.to_path_buf(), e));
        }
        match serde_json::from_str::<Line>(&line) {
            Ok(Line::End) => return Ok(()),
            Ok(Line::Error(e)) => return Err(QueryError::Failed(path.to_path_buf(), e)),
            Ok(l) => on_line(l)?,
            Err(e) => return Err(bad(format!("bad reply {line:?}: {e}"))),
        }
    }
}

/// The next line of a stream of lines, of at most `max` bytes.
fn read_buffered_line(r: &mut impl io::BufRead, max: usize) -> io::Result<String> {
    let mut line = Vec::new();
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed mid-line",
            ));
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(nl) => (nl, true),
            None => (buf.len(), false),
        };
        line.extend_from_slice(&buf[..take]);
        r.consume(take + usize::from(done));
        if line.len() > max {
            return Err(io::Error::other(format!("reply longer than {max} bytes")));
        }
        if done {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
    }
}

/// Connect to the daemon serving the mount that `mountpoint` is in and send `request`.
fn send(mountpoint: &Path, request: &str) -> Result<UnixStream, QueryError> {
    let md =
        std::fs::metadata(mountpoint).map_err(|e| QueryError::Stat(mountpoint.to_path_buf(), e))?;
    send_to_dev(mountpoint, md.dev(), request)
}

/// Connect to the daemon serving the mount whose device is `dev` (the st_dev of its files) and
/// send `request`; `mountpoint` names it in errors.
fn send_to_dev(mountpoint: &Path, dev: u64, request: &str) -> Result<UnixStream, QueryError> {
    let mp = mountpoint.to_path_buf();
    let path = socket_path(rustix::fs::major(dev), rustix::fs::minor(dev));
    let io_err = |e: io::Error| QueryError::Io(mp.clone(), e);
    match check_private_dir(&runtime_dir()) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(QueryError::NotCowfs(mp, path))
        }
        other => other.map_err(io_err)?,
    }
    let conn = match UnixStream::connect(&path) {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(QueryError::NotCowfs(mp, path))
        }
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            return Err(QueryError::DaemonGone(mp, path))
        }
        Err(e) => return Err(io_err(e)),
    };
    let server = peer_uid(&conn).map_err(io_err)?;
    if !trusted_uid(server) {
        return Err(io_err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is served by uid {server}, not by root or us",
                path.display()
            ),
        )));
    }
    (&conn)
        .write_all(format!("{request}\n").as_bytes())
        .map_err(io_err)?;
    Ok(conn)
}

/// The `error` of a reply, if it is one.
fn reply_error(line: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    v.get("error")?.as_str().map(str::to_string)
}

/// Ask the daemon serving `mountpoint` for its stats.
pub fn query(mountpoint: &Path) -> Result<Stats, QueryError> {
    let line = request(mountpoint, "stats", Some(Duration::from_secs(10)))?;
    if let Some(e) = reply_error(&line) {
        return Err(QueryError::Failed(mountpoint.to_path_buf(), e));
    }
    serde_json::from_str(&line).map_err(|e| {
        QueryError::Io(
            mountpoint.to_path_buf(),
            io::Error::other(format!("bad reply {line:?}: {e}")),
        )
    })
}

/// Have the daemon serving `mountpoint` commit now; returns once the commit is durable, or with
/// the error that made it fail (also an earlier commit's failure that is still latched).
pub fn sync(mountpoint: &Path) -> Result<(), QueryError> {
    let line = request(mountpoint, "sync", None)?;
    ok_reply(mountpoint, &line)
}

/// Have the daemon serving `mountpoint` make its store read-only (committing what was written
/// before: returns once that is durable, or with the commit's error) or writable again (an
/// error if it opened the store read-only). For `mount -o remount`.
pub fn set_read_only(mountpoint: &Path, read_only: bool) -> Result<(), QueryError> {
    let req = if read_only {
        "remount ro"
    } else {
        "remount rw"
    };
    let line = request(mountpoint, req, None)?;
    ok_reply(mountpoint, &line)
}

/// The last report of the snapshot ioctl that asked for progress id `id` on the mount whose
/// device is `dev` (`mountpoint` names it in errors): `None` if there is none (not started
/// yet, or finished long ago). A daemon too old to know the request answers with an error.
pub fn tree_progress(
    mountpoint: &Path,
    dev: u64,
    id: u32,
) -> Result<Option<OpProgress>, QueryError> {
    let conn = send_to_dev(mountpoint, dev, &format!("progress {id}"))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let line = read_reply(mountpoint, &conn, Some(deadline))?;
    if let Some(e) = reply_error(&line) {
        return Err(QueryError::Failed(mountpoint.to_path_buf(), e));
    }
    serde_json::from_str(&line).map_err(|e| {
        QueryError::Io(
            mountpoint.to_path_buf(),
            io::Error::other(format!("bad reply {line:?}: {e}")),
        )
    })
}

/// `{"ok":true}`, or the daemon's error.
fn ok_reply(mountpoint: &Path, line: &str) -> Result<(), QueryError> {
    if let Some(e) = reply_error(line) {
        return Err(QueryError::Failed(mountpoint.to_path_buf(), e));
    }
    if line.trim() == "{\"ok\":true}" {
        Ok(())
    } else {
        Err(QueryError::Io(
            mountpoint.to_path_buf(),
            io::Error::other(format!("bad reply {line:?}")),
        ))
    }
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

    #[test]
    fn request_lines_are_bounded() -> io::Result<()> {
        // Regression (issue 10, defect 13): request lines were read without a bound.
        let (a, b) = UnixStream::pair()?;
        (&a).write_all(&vec![b'x'; MAX_REQUEST + 10])?;
        let deadline = Some(Instant::now() + Duration::from_secs(5));
        assert_eq!(read_line_bounded(&b, MAX_REQUEST, deadline)?, None);
        let (a, b) = UnixStream::pair()?;
        (&a).write_all(b"stats\nmore")?;
        assert_eq!(
            read_line_bounded(&b, MAX_REQUEST, deadline)?,
            Some(b"stats".to_vec())
        );
        // A peer that says nothing runs into the deadline.
        let (_a, b) = UnixStream::pair()?;
        let t = Instant::now();
        let short = Some(Instant::now() + Duration::from_millis(200));
        assert!(read_line_bounded(&b, MAX_REQUEST, short).is_err());
        assert!(t.elapsed() < Duration::from_secs(2));
        Ok(())
    }

    /// Handlers that answer `progress 7` and record `remount` requests.
    fn handlers(remounts: Arc<parking_lot::Mutex<Vec<bool>>>) -> Handlers {
        Handlers {
            stats: Box::new(Stats::default),
            sync: Box::new(|| Ok(())),
            report: Box::new(|_, sink| sink(&Line::End)),
            set_read_only: Box::new(move |ro| {
                remounts.lock().push(ro);
                if ro {
                    Ok(())
                } else {
                    Err("opened read-only".into())
                }
            }),
            progress: Box::new(|id| {
                (id == 7).then(|| OpProgress {
                    op: "snapshot".into(),
                    phase: "copying".into(),
                    done: 3,
                    total: Some(9),
                    finished: false,
                })
            }),
        }
    }

    fn ask(h: &Handlers, line: &str) -> io::Result<String> {
        let (a, b) = UnixStream::pair()?;
        (&a).write_all(format!("{line}\n").as_bytes())?;
        serve_one(&b, h)?;
        let mut out = String::new();
        (&a).read_to_string(&mut out)?;
        Ok(out)
    }

    #[test]
    fn progress_and_remount_requests() -> io::Result<()> {
        // Issue 13: `cowfs snapshot` reads a running operation's progress by its id, and
        // `mount -o remount` tells the daemon to go read-only or writable.
        let remounts = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let h = handlers(remounts.clone());
        let p: Option<OpProgress> = serde_json::from_str(&ask(&h, "progress 7")?)?;
        assert_eq!(p.map(|p| (p.done, p.total)), Some((3, Some(9))));
        assert_eq!(ask(&h, "progress 8")?, "null\n");
        assert!(ask(&h, "progress x")?.contains("unknown request"));
        assert_eq!(ask(&h, "remount ro")?, "{\"ok\":true}\n");
        assert_eq!(
            reply_error(&ask(&h, "remount rw")?).as_deref(),
            Some("opened read-only")
        );
        assert_eq!(*remounts.lock(), [true, false]);
        Ok(())
    }

    #[test]
    fn control_directory_must_be_private_and_ours() -> io::Result<()> {
        // Regression (issue 10, defect 13): a control directory made by someone else was used.
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("cowfs");
        make_private_dir(&dir)?;
        assert_eq!(std::fs::metadata(&dir)?.mode() & 0o7777, 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        check_private_dir(&dir)?;
        assert_eq!(std::fs::metadata(&dir)?.mode() & 0o7777, 0o700, "tightened");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))?;
        let e = check_private_dir(&dir).err().map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("writable by others")),
            "{e:?}"
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&dir, &link)?;
        let e = check_private_dir(&link).err().map(|e| e.to_string());
        assert!(
            e.as_deref().is_some_and(|e| e.contains("symbolic link")),
            "{e:?}"
        );
        if sys::geteuid() == 0 {
            std::os::unix::fs::lchown(&dir, Some(65534), None)?;
            let e = make_private_dir(&dir).err().map(|e| e.to_string());
            assert!(
                e.as_deref()
                    .is_some_and(|e| e.contains("owned by uid 65534")),
                "{e:?}"
            );
        }
        Ok(())
    }
}
