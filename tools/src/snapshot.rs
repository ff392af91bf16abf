//! `cowfs snapshot [--readonly] SRC DST` and `cowfs snapshot --delete DIR`: ask the daemon,
//! through an ioctl on a descriptor of SRC (or DIR), to copy a tree (or a file) as `cp -a`
//! would, sharing every block, or to remove a tree in batches. The ioctl carries the caller's
//! credentials, which the daemon checks as `cp -a` and `rm -r` would need them.

use crate::CmdResult;
use cowfs_fs::core::{
    SnapshotArg, COWFS_IOC_SNAPSHOT, SNAPSHOT_ARG_LEN, SNAP_DELETE, SNAP_READONLY,
};
use rustix::fs::{Mode, OFlags};
use std::io::{IsTerminal, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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

/// The ioctl, with a spinner and elapsed time on a terminal while the daemon works (it cannot
/// report progress through one ioctl).
fn call(fd: &OwnedFd, arg: &SnapshotArg, label: String) -> std::io::Result<SnapshotArg> {
    let mut buf: [u8; SNAPSHOT_ARG_LEN] = arg.encode();
    let done = Arc::new(AtomicBool::new(false));
    let spinner = std::io::stderr().is_terminal().then(|| {
        let done = done.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut shown = false;
            for frame in ['|', '/', '-', '\\'].iter().cycle() {
                std::thread::sleep(Duration::from_millis(150));
                if done.load(Ordering::Relaxed) {
                    break;
                }
                let mut err = std::io::stderr();
                let _ = write!(
                    err,
                    "\r{frame} {label} {:.1}s",
                    start.elapsed().as_secs_f64()
                );
                let _ = err.flush();
                shown = true;
            }
            if shown {
                let _ = write!(std::io::stderr(), "\r{}\r", " ".repeat(label.len() + 12));
            }
        })
    });
    const OP: rustix::ioctl::Opcode = COWFS_IOC_SNAPSHOT as rustix::ioctl::Opcode;
    let r = crate::sys::ioctl_inout::<OP, SNAPSHOT_ARG_LEN>(fd, &mut buf);
    done.store(true, Ordering::Relaxed);
    if let Some(h) = spinner {
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
            name,
        };
        call(&fd, &arg, format!("removing {}", dir.display()))
            .map_err(|e| refused("cannot remove", dir, e))?;
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
        name,
    };
    call(
        &fd,
        &arg,
        format!("snapshot {} -> {}", src.display(), dst.display()),
    )
    .map_err(|e| refused("cannot snapshot", src, e))?;
    Ok(ExitCode::SUCCESS)
}
