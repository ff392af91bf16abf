//! `cowfs inspect`: a store's summary, or one inode and its extent map, of the last commit:
//! read here from an unmounted store, or asked of the daemon of a mounted one (the same
//! cowstore report, printed by the same code).

use crate::human::bytes;
use cowfs_fs::control;
use cowfs_fs::live::{Line, Request};
use cowstore::{At, InodeReport, OpenOptions, Store, Summary};
use serde::Serialize;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "TARGET is a store directory (mounted or not) or a file or directory inside a \
                  cowfs mount. A mounted store is asked of its daemon: what it shows is the last \
                  commit (run cowfs sync MOUNTPOINT first to include the latest changes)."
)]
pub struct InspectArgs {
    /// A store directory, or a file or directory inside a cowfs mount (that inode is shown).
    #[arg(value_name = "TARGET")]
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
    #[serde(flatten)]
    inode: InodeReport,
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

/// Where the target of `du`, `inspect` or `fsck` is, and so who answers.
#[derive(Debug, PartialEq)]
pub enum Located {
    /// A store no mount serves (or not a store at all: opening it says why): opened read-only
    /// here.
    Offline,
    /// A store a mount serves: its daemon answers, reached through this mountpoint.
    MountedStore(PathBuf),
    /// A file or directory inside a cowfs mount, by its inode number (st_ino): the mount's
    /// daemon answers, reached through the path's st_dev. The caller could `stat` it, so it can
    /// reach it; only root and the daemon's user may ask a daemon at all.
    InMount(u64),
}

/// Classify `arg`: a store directory (it has a superblock), mounted or not, or a path inside a
/// cowfs mount (its st_dev is a cowfs mount's, from /proc/self/mountinfo).
pub fn locate(arg: &std::path::Path) -> Located {
    use std::os::unix::fs::MetadataExt;
    if std::fs::symlink_metadata(arg.join(cowstore::superblock::SUPERBLOCK_FILE)).is_ok() {
        return match crate::mountinfo::mount_of_store(arg) {
            Some(mp) => Located::MountedStore(mp),
            None => Located::Offline,
        };
    }
    match std::fs::metadata(arg) {
        Ok(md) if crate::mountinfo::mount_of_dev(md.dev()).is_some() => Located::InMount(md.ino()),
        _ => Located::Offline,
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
    let located = locate(&args.store);
    let at = match (&located, &args.path) {
        (Located::InMount(ino), None) => Some(At::Inode(*ino)),
        (Located::InMount(_), Some(_)) => {
            return Err("a path inside a mount names the inode itself; give no second path".into())
        }
        (_, p) => p.clone().map(At::Path),
    };
    let name = match (&located, &args.path) {
        (Located::InMount(_), _) => args.store.display().to_string(),
        (_, Some(p)) => p.clone(),
        (_, None) => String::new(),
    };
    let via = match &located {
        Located::Offline => None,
        Located::MountedStore(mp) => Some(mp.clone()),
        Located::InMount(_) => Some(args.store.clone()),
    };
    match (at, via) {
        (None, None) => print_summary(args, &open_read_only(&args.store)?.committed_summary()?),
        (None, Some(via)) => {
            let mut summary = None;
            control::report(&via, &Request::Summary, |line| {
                if let Line::Summary(s) = line {
                    summary = Some(s);
                }
                Ok(())
            })?;
            let s = summary.ok_or("the daemon sent no summary")?;
            print_summary(args, &s)
        }
        (Some(at), None) => {
            let report = open_read_only(&args.store)?.inode_report(&at)?;
            print_inode(args, name, report)
        }
        (Some(at), Some(via)) => {
            let mut inode: Option<InodeReport> = None;
            control::report(&via, &Request::Inspect { at }, |line| {
                match (line, &mut inode) {
                    (Line::Inode(i), _) => inode = Some(i),
                    (Line::Extent(e), Some(i)) => i.extents.push(e),
                    _ => {}
                }
                Ok(())
            })?;
            print_inode(args, name, inode.ok_or("the daemon sent no inode")?)
        }
    }
}

fn print_summary(args: &InspectArgs, s: &Summary) -> Result<(), Box<dyn std::error::Error>> {
    if args.json {
        out!("{}", serde_json::to_string_pretty(s)?);
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
    Ok(())
}

fn print_inode(
    args: &InspectArgs,
    path: String,
    inode: InodeReport,
) -> Result<(), Box<dyn std::error::Error>> {
    let doc = InodeJson { path, inode };
    if args.json {
        out!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    let (path, i) = (&doc.path, &doc.inode);
    out!(
        "{path}: inode {} {} mode {} uid {} gid {} links {} size {} ({}) allocated {}",
        i.ino,
        i.kind,
        i.mode,
        i.uid,
        i.gid,
        i.nlink,
        i.size,
        bytes(i.size),
        bytes(i.allocated)
    );
    if !i.extents.is_empty() {
        out!(
            "{:>16} {:>16} {:>14} {:>8}",
            "file offset",
            "pool offset",
            "length",
            "refcount"
        );
        for e in &i.extents {
            out!(
                "{:>16} {:>16} {:>14} {:>8}",
                e.file_offset,
                e.pool_offset,
                e.len,
                e.refcount
            );
        }
    }
    Ok(())
}
