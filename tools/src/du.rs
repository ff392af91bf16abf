//! `cowfs du`: per file and directory, total, exclusive and shared space, like
//! `btrfs filesystem du`. "Set shared" of a directory counts each shared block once.

use crate::human::bytes;
use crate::inspect::open_read_only;
use cowstore::{FileKind, InodeNo, Store, Usage};
use serde::Serialize;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct DuArgs {
    /// The store directory.
    pub store: PathBuf,
    /// Paths inside the store (default: /).
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

#[derive(Serialize)]
struct Row {
    path: String,
    total: u64,
    exclusive: u64,
    /// Only for directories: shared blocks counted once.
    set_shared: Option<u64>,
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

fn du(args: &DuArgs) -> Result<(), Box<dyn std::error::Error>> {
    let store = open_read_only(&args.store)?;
    let paths = if args.paths.is_empty() {
        vec!["/".to_string()]
    } else {
        args.paths.clone()
    };
    let mut rows = Vec::new();
    for p in &paths {
        let a = store
            .resolve(p.as_bytes())
            .map_err(|e| format!("{p}: {e}"))?;
        walk(
            &store,
            a.ino,
            a.kind,
            p.trim_end_matches('/').to_string(),
            args.summarize,
            true,
            &mut rows,
        )?;
    }
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

/// Rows for `ino` (and, unless summarizing, everything under it), children before parents.
fn walk(
    store: &Store,
    ino: InodeNo,
    kind: FileKind,
    path: String,
    summarize: bool,
    top: bool,
    rows: &mut Vec<Row>,
) -> Result<Usage, cowstore::Error> {
    if kind != FileKind::Directory {
        let u = store.usage(&[ino])?;
        if !summarize || top {
            rows.push(Row {
                path,
                total: u.total,
                exclusive: u.exclusive,
                set_shared: None,
            });
        }
        return Ok(u);
    }
    if !summarize {
        for e in store.entries(ino) {
            let e = e?;
            let child = format!("{path}/{}", String::from_utf8_lossy(&e.name));
            walk(store, e.ino, e.kind, child, false, false, rows)?;
        }
    }
    let files = store.files_under(ino)?;
    let u = store.usage(&files)?;
    rows.push(Row {
        path,
        total: u.total,
        exclusive: u.exclusive,
        set_shared: Some(u.set_shared),
    });
    Ok(u)
}
