//! `cowfs dedupe PATH...`: share the data blocks of identical content across files of a mounted
//! store, like duperemove on btrfs/XFS (FIDEDUPERANGE never reaches a FUSE daemon). The daemon
//! does the work: each file is opened and handed to it with the `COWFS_IOC_DEDUPE` ioctl, which
//! hashes its blocks into this command's session and shares those equal, byte for byte, to
//! blocks of files handed over before (see docs/design.md, "Dedupe").

use crate::human::{bytes, Progress};
use crate::CmdResult;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::ExitCode;

/// Share identical data blocks of the given files (directories: every regular file below,
/// not crossing into other mounts).
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Every file must be readable. A file's own blocks are replaced only if you \
                  may write it or own it (root may always), as FIDEDUPERANGE requires; a file \
                  you may only read still serves as a source for the others. Content never \
                  changes. The result is committed before the command returns."
)]
pub struct Args {
    /// Files and directories on one or more cowfs mounts.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Print the totals as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `_IOWR('C', 0x41, struct cowfs_dedupe)`: the layout is in fs/src/core/dedupe.rs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct DedupeArg {
    session: u64,
    flags: u32,
    reserved: u32,
    examined: u64,
    deduped: u64,
    freed: u64,
    reserved2: [u64; 3],
}

const FLAG_INDEX_ONLY: u32 = 1;
const FLAG_END: u32 = 2;

#[allow(unsafe_code)]
mod sys {
    use super::DedupeArg;
    use rustix::ioctl::{ioctl, opcode, Updater};
    use std::os::fd::AsFd;

    const DEDUPE: rustix::ioctl::Opcode = opcode::read_write::<DedupeArg>(b'C', 0x41);
    const _: () = assert!(DEDUPE as u64 == 0xc040_4341);

    pub fn dedupe(fd: impl AsFd, arg: &mut DedupeArg) -> rustix::io::Result<()> {
        // SAFETY: DEDUPE is _IOWR of exactly `DedupeArg` (64 bytes, repr(C)); the kernel reads
        // and writes that many bytes of `arg`, which lives for the whole call.
        unsafe { ioctl(fd, Updater::<DEDUPE, DedupeArg>::new(arg)) }
    }
}

#[derive(Debug, Default)]
struct Totals {
    files: u64,
    examined: u64,
    deduped: u64,
    freed: u64,
}

/// Every regular file named by or below `paths`, once each (hard links too), with its size.
fn collect(paths: &[PathBuf], errors: &mut Vec<String>) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut stack: Vec<(PathBuf, Option<u64>)> =
        paths.iter().rev().map(|p| (p.clone(), None)).collect();
    while let Some((p, dev)) = stack.pop() {
        let md = match std::fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) => {
                errors.push(format!("{}: {e}", p.display()));
                continue;
            }
        };
        if dev.is_some_and(|d| d != md.dev()) {
            continue;
        }
        let ft = md.file_type();
        if ft.is_dir() {
            match std::fs::read_dir(&p) {
                Ok(rd) => {
                    let mut names: Vec<PathBuf> =
                        rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
                    names.sort();
                    for n in names.into_iter().rev() {
                        stack.push((n, Some(md.dev())));
                    }
                }
                Err(e) => errors.push(format!("{}: {e}", p.display())),
            }
        } else if ft.is_file() && seen.insert((md.dev(), md.ino())) {
            out.push((p, md.size()));
        } else if dev.is_none() && !ft.is_file() {
            errors.push(format!("{}: not a regular file", p.display()));
        }
    }
    out
}

fn session_id() -> u64 {
    let mut b = [0u8; 8];
    let _ = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
    u64::from_ne_bytes(b).max(1) ^ u64::from(std::process::id())
}

pub fn run(a: Args) -> CmdResult {
    let mut errors = Vec::new();
    let files = collect(&a.paths, &mut errors);
    let session = session_id().max(1);
    let total_bytes: u64 = files.iter().map(|f| f.1).sum();
    let mut progress = Progress::new();
    let mut t = Totals::default();
    // One open file per mount, to end its session (commit, free the index) at the end.
    let mut mounts: HashMap<u64, File> = HashMap::new();
    let started = std::time::Instant::now();
    let mut done_bytes = 0u64;
    for (path, size) in &files {
        let f = match File::open(path) {
            Ok(f) => f,
            Err(e) => {
                errors.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        let dev = f.metadata().map(|m| m.dev()).unwrap_or(0);
        let mut arg = DedupeArg {
            session,
            ..Default::default()
        };
        let mut r = sys::dedupe(&f, &mut arg);
        if matches!(r, Err(e) if e == rustix::io::Errno::ACCESS || e == rustix::io::Errno::PERM) {
            // Not ours to change: still a source for the files after it.
            errors.push(format!(
                "{}: cannot dedupe into it: {}",
                path.display(),
                std::io::Error::from(r.err().unwrap_or(rustix::io::Errno::ACCESS))
            ));
            arg = DedupeArg {
                session,
                flags: FLAG_INDEX_ONLY,
                ..Default::default()
            };
            r = sys::dedupe(&f, &mut arg);
        }
        match r {
            Ok(()) => {
                t.files += 1;
                t.examined += arg.examined;
                t.deduped += arg.deduped;
                t.freed += arg.freed;
                mounts.entry(dev).or_insert(f);
            }
            Err(rustix::io::Errno::NOTTY) => {
                errors.push(format!("{}: not on a cowfs mount", path.display()))
            }
            Err(e) => errors.push(format!("{}: {}", path.display(), std::io::Error::from(e))),
        }
        done_bytes += size;
        progress.update("dedupe", done_bytes, total_bytes);
    }
    for f in mounts.values() {
        let mut arg = DedupeArg {
            session,
            flags: FLAG_END,
            ..Default::default()
        };
        if let Err(e) = sys::dedupe(f, &mut arg) {
            errors.push(format!("commit failed: {}", std::io::Error::from(e)));
        }
    }
    progress.finish();
    let secs = started.elapsed().as_secs_f64();
    if a.json {
        let v = serde_json::json!({
            "files": t.files,
            "examined_bytes": t.examined,
            "deduped_bytes": t.deduped,
            "freed_bytes": t.freed,
            "seconds": secs,
            "errors": errors,
        });
        out!("{v}");
    } else {
        out!(
            "{} files: examined {}, {} identical and now shared, {} given back ({:.1}s)",
            t.files,
            bytes(t.examined),
            bytes(t.deduped),
            bytes(t.freed),
            secs
        );
    }
    for e in &errors {
        err!("cowfs dedupe: {e}");
    }
    Ok(if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
