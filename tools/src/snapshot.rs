//! `cowfs snapshot [--readonly] SRC DST` and `cowfs snapshot --delete DIR`: ask the daemon,
//! through an ioctl on a descriptor of SRC (or DIR), to copy a tree (or a file) as `cp -a`
//! would, sharing every block, or to remove a tree in batches. The ioctl carries the caller's
//! credentials, which the daemon checks as `cp -a` and `rm -r` would need them.

use crate::{human, CmdResult};
use cowfs_fs::control;
use cowfs_fs::core::{
    SnapshotArg, COWFS_IOC_SNAPSHOT, SNAPSHOT_ARG_LEN, SNAP_DELETE, SNAP_READONLY,
};
use cowfs_fs::progress::OpProgress;
use rustix::fs::{Mode, OFlags};
use std::io::{IsTerminal, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Make DST a copy of SRC (a directory tree or one file) on the same cowfs mount, as `cp -a`
/// would make it but sharing every block: modes, owners, ns timestamps, xattrs and ACLs,
/// symlinks, device nodes, FIFOs, hard links inside the tree and holes are kept. DST appears
/// whole or not at all, and is durable when the command returns.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "For one file this is the reflink that always works: GNU cp 9.1 \
                  copies a file with holes by reading and writing its data, while \
                  `cowfs snapshot FILE COPY` shares its blocks and keeps its holes.\n\
                  --delete removes DIR (any tree, a read-only snapshot included) inside \
                  the daemon, in batches, needing what `rm -r DIR` needs."
)]
pub struct Args {
    /// Every file and directory of the snapshot refuses changes (EROFS); only
    /// `cowfs snapshot --delete` removes it.
    #[arg(long, conflicts_with = "delete")]
    pub readonly: bool,
    /// Remove the tree DIR (the one path given).
    #[arg(long)]
    pub delete: bool,
    /// SRC DST, or DIR with --delete.
    #[arg(required = true, num_args = 1..=2)]
    pub paths: Vec<PathBuf>,
}

/// An error message naming the path and saying what the errno means here.
fn refused(what: &str, path: &Path, e: std::io::Error) -> Box<dyn std::error::Error> {
    let why = match e.raw_os_error() {
        Some(libc::ENOTTY) => "not on a cowfs mount (or its daemon has no snapshots)".to_string(),
        Some(libc::EXDEV) => "not on the same cowfs mount".to_string(),
        _ => e.to_string(),
    };
    format!("{what} {}: {why}", path.display()).into()
}

/// The parent directory and the last component of `p` (which must name an entry: not `.`,
/// `..` or `/`).
fn split(p: &Path) -> Result<(PathBuf, Vec<u8>), Box<dyn std::error::Error>> {
    let name = p
        .file_name()
        .ok_or_else(|| format!("{}: needs a name (not . or .. or /)", p.display()))?;
    let parent = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if name.as_bytes().len() > 255 {
        return Err(format!("{}: name longer than 255 bytes", p.display()).into());
    }
    Ok((parent, name.as_bytes().to_vec()))
}

/// Open `p` for the ioctl: a directory or a regular file, never following a last symlink.
fn open_entry(p: &Path) -> Result<(OwnedFd, std::fs::Metadata), Box<dyn std::error::Error>> {
    let meta = std::fs::symlink_metadata(p).map_err(|e| refused("cannot stat", p, e))?;
    let ft = meta.file_type();
    if !ft.is_dir() && !ft.is_file() {
        return Err(format!(
            "{}: only a directory or a regular file can be named here (snapshot its directory)",
            p.display()
        )
        .into());
    }
    let fd = rustix::fs::open(
        p,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .map_err(|e| refused("cannot open", p, e.into()))?;
    Ok((fd, meta))
}

/// How often the command asks the daemon where the operation is, and redraws its line.
const TICK: Duration = Duration::from_millis(100);

/// A random progress id, not 0 (0 asks for none).
fn progress_id() -> u32 {
    let mut b = [0u8; 4];
    let _ = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
    let id = u32::from_ne_bytes(b);
    if id == 0 {
        std::process::id() | 1
    } else {
        id
    }
}

/// Where the command is in one phase of the daemon's operation: the first report seen of the
/// phase, for the rate.
struct Phase {
    name: String,
    t0: Instant,
    done0: u64,
}

/// The line on stderr while the daemon works: the daemon's progress as a bar (count and
/// total, rate, ETA), or a spinner with the elapsed time while it has none to give (not
/// started yet, or a daemon too old to publish progress).
struct Meter {
    what: &'static str,
    start: Instant,
    phase: Option<Phase>,
    /// The length of what is on the line now (to overwrite and erase it).
    shown: usize,
    frame: usize,
}

impl Meter {
    fn new(what: &'static str) -> Meter {
        Meter {
            what,
            start: Instant::now(),
            phase: None,
            shown: 0,
            frame: 0,
        }
    }

    fn line(&mut self, p: Option<&OpProgress>) -> String {
        let now = Instant::now();
        let Some(p) = p else {
            const FRAMES: [char; 4] = ['|', '/', '-', '\\'];
            self.frame += 1;
            return format!(
                "{} {} {:.1}s",
                FRAMES[self.frame % FRAMES.len()],
                self.what,
                now.duration_since(self.start).as_secs_f64()
            );
        };
        // The rate is of this phase; "committing" continues the one before.
        let same = self
            .phase
            .as_ref()
            .is_some_and(|ph| ph.name == p.phase || p.phase == "committing");
        if !same {
            self.phase = Some(Phase {
                name: p.phase.clone(),
                t0: now,
                done0: p.done,
            });
        }
        // No rate once the entries are done (committing, done): only time would pass.
        let rate = self.phase.as_ref().and_then(|ph| {
            let secs = now.duration_since(ph.t0).as_secs_f64();
            (secs >= 0.2 && p.done > ph.done0 && !matches!(p.phase.as_str(), "committing" | "done"))
                .then(|| (p.done - ph.done0) as f64 / secs)
        });
        human::tree_progress_line(self.what, &p.phase, p.done, p.total, rate)
    }

    fn draw(&mut self, p: Option<&OpProgress>) {
        let line = self.line(p);
        let pad = self.shown.saturating_sub(line.len());
        let mut err = std::io::stderr();
        let _ = write!(err, "\r{line}{}", " ".repeat(pad));
        let _ = err.flush();
        self.shown = line.len();
    }

    fn erase(&mut self) {
        if self.shown > 0 {
            let mut err = std::io::stderr();
            let _ = write!(err, "\r{}\r", " ".repeat(self.shown));
            let _ = err.flush();
            self.shown = 0;
        }
    }
}

/// Show the operation's progress until the ioctl's outcome comes on `outcome` (true: it
/// succeeded), polling the daemon of the mount whose device is `dev` for progress id `id`;
/// after a success its last report (where it ended: every entry done); then erase the line.
fn show_progress(what: &'static str, path: &Path, dev: u64, id: u32, outcome: &Receiver<bool>) {
    let mut meter = Meter::new(what);
    // Whether the daemon answers `progress` at all (an older one does not): else a spinner.
    let mut asks = true;
    let mut last: Option<OpProgress> = None;
    let mut poll = |last: &mut Option<OpProgress>| {
        if asks {
            match control::tree_progress(path, dev, id) {
                Ok(Some(p)) => *last = Some(p),
                Ok(None) => {}
                Err(_) => asks = false,
            }
        }
    };
    loop {
        match outcome.recv_timeout(TICK) {
            Err(RecvTimeoutError::Timeout) => {
                poll(&mut last);
                meter.draw(last.as_ref());
            }
            Ok(true) => {
                poll(&mut last);
                if let Some(mut p) = last.take().filter(|p| p.finished) {
                    p.phase = "done".into();
                    meter.draw(Some(&p));
                }
                break;
            }
            Ok(false) | Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    meter.erase();
}

/// The ioctl on `fd` (of `path`, on the mount whose device is `dev`). On a terminal the
/// daemon publishes the operation's progress under a random id, which a second thread reads
/// over the control socket and draws as a bar while the ioctl runs (at most 10 times a
/// second); otherwise nothing is asked (a snapshot then need not count its source) and nothing
/// is printed.
fn call(
    fd: &OwnedFd,
    path: &Path,
    mut arg: SnapshotArg,
    what: &'static str,
    dev: u64,
) -> std::io::Result<SnapshotArg> {
    let (tx, rx) = std::sync::mpsc::channel();
    let meter = if std::io::stderr().is_terminal() {
        arg.progress = progress_id();
        let (id, path) = (arg.progress, path.to_path_buf());
        std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || show_progress(what, &path, dev, id, &rx))
            .ok()
    } else {
        None
    };
    let mut buf: [u8; SNAPSHOT_ARG_LEN] = arg.encode();
    const OP: rustix::ioctl::Opcode = COWFS_IOC_SNAPSHOT as rustix::ioctl::Opcode;
    let r = crate::sys::ioctl_inout::<OP, SNAPSHOT_ARG_LEN>(fd, &mut buf);
    let _ = tx.send(r.is_ok());
    if let Some(h) = meter {
        let _ = h.join();
    }
    r?;
    SnapshotArg::decode(&buf)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "bad ioctl answer"))
}

pub fn run(a: Args) -> CmdResult {
    if a.delete {
        let [dir] = a.paths.as_slice() else {
            return Err("--delete takes one path: DIR".into());
        };
        let (parent, name) = split(dir)?;
        let (fd, meta) = open_entry(dir)?;
        let pmeta = std::fs::metadata(&parent).map_err(|e| refused("cannot stat", &parent, e))?;
        if pmeta.dev() != meta.dev() {
            return Err(format!("{}: a mount point cannot be removed", dir.display()).into());
        }
        let arg = SnapshotArg {
            other: pmeta.ino(),
            flags: SNAP_DELETE,
            progress: 0,
            name,
        };
        call(&fd, dir, arg, "delete", meta.dev()).map_err(|e| refused("cannot remove", dir, e))?;
        return Ok(ExitCode::SUCCESS);
    }
    let [src, dst] = a.paths.as_slice() else {
        return Err("takes SRC DST (or --delete DIR)".into());
    };
    match std::fs::symlink_metadata(dst) {
        Ok(_) => return Err(format!("{}: exists (DST must not exist)", dst.display()).into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(refused("cannot stat", dst, e)),
    }
    let (parent, name) = split(dst)?;
    let (fd, meta) = open_entry(src)?;
    let pmeta = std::fs::metadata(&parent).map_err(|e| refused("cannot stat", &parent, e))?;
    if !pmeta.is_dir() {
        return Err(format!("{}: not a directory", parent.display()).into());
    }
    if pmeta.dev() != meta.dev() {
        return Err(refused(
            "cannot snapshot into",
            dst,
            std::io::Error::from_raw_os_error(libc::EXDEV),
        ));
    }
    let arg = SnapshotArg {
        other: pmeta.ino(),
        flags: if a.readonly { SNAP_READONLY } else { 0 },
        progress: 0,
        name,
    };
    call(&fd, src, arg, "snapshot", meta.dev()).map_err(|e| refused("cannot snapshot", src, e))?;
    Ok(ExitCode::SUCCESS)
}
