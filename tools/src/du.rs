//! `cowfs du`: per file and directory, total, exclusive and shared space, like
//! `btrfs filesystem du`. "Set shared" of a directory counts each shared block once.
//!
//! Of an unmounted store it opens the store read-only; of a mounted store, or of paths inside a
//! live mount, the mount's daemon runs the same report (`Store::du_report`) on the last
//! committed state and streams the rows back. Either way the rows are those of the last commit
//! and are printed by the same code here.

use crate::human::bytes;
use crate::inspect::{locate, open_read_only, Located};
use cowfs_fs::control;
use cowfs_fs::live::{Line, Request};
use cowstore::{At, DuRow};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
#[command(
    after_help = "TARGET is a store directory (mounted or not; PATHS are then paths inside the \
                  store, default /), or a file or directory inside a cowfs mount (PATHS are then \
                  more of those). A mounted store is asked of its daemon: the numbers are those \
                  of the last commit (run cowfs sync MOUNTPOINT first to include the latest \
                  changes)."
)]
pub struct DuArgs {
    /// A store directory, or a file or directory inside a cowfs mount.
    #[arg(value_name = "TARGET")]
    pub store: PathBuf,
    /// Paths inside the store (default: /), or more paths inside mounts.
    pub paths: Vec<String>,
    /// Only the total of each path, not every file under it.
    #[arg(short = 's', long)]
    pub summarize: bool,
    /// Sizes in bytes instead of binary units.
    #[arg(long)]
    pub raw: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &DuArgs) -> i32 {
    match du(args) {
        Ok(()) => 0,
        Err(e) => {
            err!("cowfs du: {}: {e}", args.store.display());
            1
        }
    }
}

/// Rows for `at` as asked of the daemon of the mount that `via` is in.
pub fn live_rows(via: &Path, at: At, summarize: bool) -> Result<Vec<DuRow>, control::QueryError> {
    let mut rows = Vec::new();
    control::report(via, &Request::Du { at, summarize }, |line| {
        if let Line::Du(r) = line {
            rows.push(r);
        }
        Ok(())
    })?;
    Ok(rows)
}

fn du(args: &DuArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut rows = Vec::new();
    // Each row's path is relative to where its report started: prefix the name it was asked by.
    let mut add = |label: &str, found: Vec<DuRow>| {
        let label = label.trim_end_matches('/');
        rows.extend(found.into_iter().map(|mut r| {
            r.path = format!("{label}{}", r.path);
            r
        }));
    };
    let store_paths = || {
        if args.paths.is_empty() {
            vec!["/".to_string()]
        } else {
            args.paths.clone()
        }
    };
    match locate(&args.store) {
        Located::Offline => {
            let store = open_read_only(&args.store)?;
            for p in store_paths() {
                let found = store
                    .du_report(&At::Path(p.clone()), args.summarize)
                    .map_err(|e| format!("{p}: {e}"))?;
                add(&p, found);
            }
        }
        Located::MountedStore(mp) => {
            for p in store_paths() {
                let found = live_rows(&mp, At::Path(p.clone()), args.summarize)
                    .map_err(|e| format!("{p}: {e}"))?;
                add(&p, found);
            }
        }
        Located::InMount(ino) => {
            let mut targets = vec![(args.store.clone(), ino)];
            for p in &args.paths {
                match locate(Path::new(p)) {
                    Located::InMount(ino) => targets.push((PathBuf::from(p), ino)),
                    _ => return Err(format!("{p}: not inside a cowfs mount").into()),
                }
            }
            for (p, ino) in targets {
                // The error names the path already.
                let found = live_rows(&p, At::Inode(ino), args.summarize)?;
                add(&p.to_string_lossy(), found);
            }
        }
    }
    print(args, rows)
}

fn print(args: &DuArgs, rows: Vec<DuRow>) -> Result<(), Box<dyn std::error::Error>> {
    if args.json {
        out!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let fmt = |n: u64| if args.raw { n.to_string() } else { bytes(n) };
    out!(
        "{:>12} {:>12} {:>12}  Filename",
        "Total",
        "Exclusive",
        "Set shared"
    );
    for r in rows {
        let name = if r.path.is_empty() {
            "/".to_string()
        } else {
            r.path.clone()
        };
        out!(
            "{:>12} {:>12} {:>12}  {name}",
            fmt(r.total),
            fmt(r.exclusive),
            r.set_shared.map(fmt).unwrap_or_else(|| "-".into())
        );
    }
    Ok(())
}
