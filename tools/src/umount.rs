//! `cowfs umount`: unmount and wait until the daemon has committed, closed the store and exited.
//! The mount is named by its mountpoint or by its store.

use crate::{mountinfo, CmdResult};
use cowfs_fs::control::{self, QueryError};
use nix::errno::Errno;
use nix::mount::{umount2, MntFlags};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

/// Unmount MOUNTPOINT (or the mount of store STORE); returns once its daemon has committed the
/// store and exited.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "umount(8) finds a mount by its store too, but only for a relative path (or \
                  with -c): it takes an absolute path to a directory for a mountpoint, as it \
                  does for every filesystem whose source is a directory."
)]
pub struct Args {
    /// The mountpoint, or the store directory that is mounted.
    #[arg(value_name = "MOUNTPOINT|STORE")]
    pub mountpoint: PathBuf,
    /// Give up waiting for the daemon after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

/// A process, identified by pid and start time (so a reused pid is not mistaken for it).
struct Daemon {
    pid: u32,
    start: Option<String>,
}

/// Field 22 of /proc/PID/stat (start time) and whether the process is a zombie; None if gone.
fn proc_state(pid: u32) -> Option<(String, bool)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let zombie = fields.first().is_some_and(|s| *s == "Z" || *s == "X");
    Some((fields.get(19)?.to_string(), zombie))
}

impl Daemon {
    fn new(pid: u32) -> Daemon {
        Daemon {
            pid,
            start: proc_state(pid).map(|(s, _)| s),
        }
    }

    fn exited(&self) -> bool {
        match proc_state(self.pid) {
            None => true,
            Some((_, true)) => true,
            Some((start, false)) => self.start.as_deref().is_some_and(|s| s != start),
        }
    }
}

fn unmount(mp: &Path) -> Result<(), String> {
    match umount2(mp, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(Errno::EBUSY) => Err(format!(
            "{}: target is busy (files are open on it)",
            mp.display()
        )),
        Err(Errno::EPERM) => {
            // Not root: the setuid helper may unmount what this user mounted.
            let st = Command::new("fusermount3").arg("-u").arg(mp).status();
            match st {
                Ok(s) if s.success() => Ok(()),
                Ok(s) => Err(format!("fusermount3 -u {} failed ({s})", mp.display())),
                Err(e) => Err(format!(
                    "{}: not permitted, and no fusermount3: {e}",
                    mp.display()
                )),
            }
        }
        Err(e) => Err(format!("{}: {e}", mp.display())),
    }
}

/// The mountpoint `path` names: itself, unless it is not a cowfs mount but a store that is
/// mounted (`cowfs umount STORE`).
fn resolve(path: &Path) -> std::io::Result<PathBuf> {
    let mp = std::path::absolute(path)?;
    let mounts = mountinfo::cowfs_mounts();
    let canonical = mp.canonicalize().unwrap_or_else(|_| mp.clone());
    if mounts.iter().any(|m| m.mountpoint == canonical) {
        return Ok(mp);
    }
    Ok(mountinfo::mount_of_store(&mp).unwrap_or(mp))
}

pub fn run(a: Args) -> CmdResult {
    let mp = resolve(&a.mountpoint)?;
    let mut stale_socket = None;
    let daemon = match control::query(&mp) {
        Ok(s) => Some(Daemon::new(s.pid)),
        // The daemon died (ENOTCONN) or its socket is stale: unmount what is left.
        Err(QueryError::Stat(_, e)) if e.raw_os_error() == Some(libc::ENOTCONN) => None,
        Err(QueryError::DaemonGone(_, socket)) => {
            stale_socket = Some(socket);
            None
        }
        Err(e) => return Err(e.to_string().into()),
    };
    unmount(&mp)?;
    if let Some(socket) = stale_socket {
        let _ = std::fs::remove_file(socket);
    }
    let Some(daemon) = daemon else {
        err!(
            "cowfs umount: {}: the daemon was not running; unmounted",
            mp.display()
        );
        return Ok(ExitCode::SUCCESS);
    };
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    while !daemon.exited() {
        if Instant::now() > deadline {
            return Err(format!(
                "unmounted, but daemon {} has not exited after {}s",
                daemon.pid, a.timeout
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(ExitCode::SUCCESS)
}
