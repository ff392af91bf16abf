//! `cowfs inspect`: a store's summary, or one inode and its extent map.

use crate::human::bytes;
use cowstore::{OpenOptions, Store};
use serde::Serialize;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// The store directory.
    pub store: PathBuf,
    /// A path inside the store (e.g. /dir/file); without it, a summary of the store.
    pub path: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct InodeJson {
    path: String,
    ino: u64,
    kind: String,
    mode: String,
    uid: u32,
    gid: u32,
    nlink: u32,
    size: u64,
    allocated: u64,
    extents: Vec<cowstore::ExtentInfo>,
}

pub fn run(args: &InspectArgs) -> i32 {
    match inspect(args) {
        Ok(()) => 0,
        Err(e) => {
            err!("cowfs inspect: {}: {e}", args.store.display());
            1
        }
    }
}

pub fn open_read_only(store: &std::path::Path) -> Result<Store, cowstore::Error> {
    Store::open(
        store,
        &OpenOptions {
            read_only: true,
            commit_interval: None,
            ..Default::default()
        },
    )
}

fn inspect(args: &InspectArgs) -> Result<(), Box<dyn std::error::Error>> {
    let store = open_read_only(&args.store)?;
    match &args.path {
        None => {
            let s = store.summary()?;
            if args.json {
                out!("{}", serde_json::to_string_pretty(&s)?);
                return Ok(());
            }
            out!("store             {}", args.store.display());
            out!("format version    {}", s.format_version);
            out!("store id          {}", s.store_id);
            out!("block size        {}", bytes(u64::from(s.block_size)));
            out!("generation        {}", s.generation);
            out!("inodes            {}", s.inodes);
            out!("extents           {}", s.extents);
            out!("pool size         {}", bytes(s.pool_bytes));
            if let Some(h) = s.pool_host_bytes {
                out!("pool on host      {}", bytes(h));
            }
            out!("referenced        {}", bytes(s.referenced_bytes));
            out!("  exclusive       {}", bytes(s.exclusive_bytes));
            out!("  shared          {}", bytes(s.shared_bytes));
            out!(
                "free in pool      {} in {} runs",
                bytes(s.free_bytes),
                s.free_runs
            );
            out!(
                "fragmentation     {:.2} extents per file ({} files with data)",
                s.avg_extents_per_file,
                s.files_with_data
            );
        }
        Some(path) => {
            let a = store.resolve(path.as_bytes())?;
            let extents = if a.kind == cowstore::FileKind::Regular {
                store.extents(a.ino)?
            } else {
                Vec::new()
            };
            let doc = InodeJson {
                path: path.clone(),
                ino: a.ino.0,
                kind: format!("{:?}", a.kind),
                mode: format!("{:o}", a.mode()),
                uid: a.uid,
                gid: a.gid,
                nlink: a.nlink,
                size: a.size,
                allocated: a.allocated,
                extents,
            };
            if args.json {
                out!("{}", serde_json::to_string_pretty(&doc)?);
                return Ok(());
            }
            out!(
                "{path}: inode {} {} mode {} uid {} gid {} links {} size {} ({}) allocated {}",
                doc.ino,
                doc.kind,
                doc.mode,
                doc.uid,
                doc.gid,
                doc.nlink,
                doc.size,
                bytes(doc.size),
                bytes(doc.allocated)
            );
            if !doc.extents.is_empty() {
                out!(
                    "{:>16} {:>16} {:>14} {:>8}",
                    "file offset",
                    "pool offset",
                    "length",
                    "refcount"
                );
                for e in &doc.extents {
                    out!(
                        "{:>16} {:>16} {:>14} {:>8}",
                        e.file_offset,
                        e.pool_offset,
                        e.len,
                        e.refcount
                    );
                }
            }
        }
    }
    Ok(())
}
