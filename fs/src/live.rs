//! Live reports: what the daemon answers to `cowfs du`, `cowfs inspect` and `cowfs fsck` of a
//! mounted store. Each runs cowstore's own report function (the one the tools run on an
//! unmounted store) against the last committed state, which it reads through one snapshot
//! without the store's state lock, so the mount keeps serving requests meanwhile; changes made
//! since the last commit are not seen until `cowfs sync` (or the periodic commit).
//!
//! The reply is a stream of JSON lines ([`Line`]), each bounded by [`crate::control::MAX_REPLY`]
//! (a file's extent map or fsck's problems come one per line), ended by [`Line::End`] or
//! [`Line::Error`].

use cowstore::{At, DuRow, ExtentInfo, InodeReport, Problem, Store, Summary};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::io;
use std::sync::Weak;

/// A report request: one JSON line on the control socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// `cowfs du`: rows of [`Store::du_report`].
    Du { at: At, summarize: bool },
    /// `cowfs inspect PATH`: [`Store::inode_report`].
    Inspect { at: At },
    /// `cowfs inspect STORE`: [`Store::committed_summary`].
    Summary,
    /// `cowfs fsck STORE`: [`Store::check`] (read-only, of the last commit) and the paths of the
    /// inodes its problems name.
    Check,
}

/// One line of a report's reply.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Line {
    Du(DuRow),
    /// The inode, its extents following as [`Line::Extent`] lines.
    Inode(InodeReport),
    Extent(ExtentInfo),
    Summary(Summary),
    /// What fsck checked; its problems follow as [`Line::Problem`] lines, then [`Line::Path`]s.
    Checked {
        generation: u64,
        inodes: u64,
        directories: u64,
        extents: u64,
    },
    Problem(Problem),
    Path(u64, String),
    End,
    Error(String),
}

/// Where the lines of a reply go (the connection); an `Err` ends the report.
pub type Sink<'a> = &'a mut dyn FnMut(&Line) -> io::Result<()>;

/// What answers report requests (see [`report_source`]).
pub type ReportHandler = Box<dyn Fn(Request, Sink<'_>) -> io::Result<()> + Send + Sync>;

/// The report handler of a mount's control socket, over a weak reference to its store (a
/// report asked for while the daemon closes the store gets an error, not a closed store kept
/// open).
pub fn report_source(store: Weak<Store>) -> impl Fn(Request, Sink<'_>) -> io::Result<()> {
    move |req, sink| {
        let Some(store) = store.upgrade() else {
            return sink(&Line::Error("the store is closing".into()));
        };
        match answer(&store, &req, sink) {
            Ok(()) => sink(&Line::End),
            Err(Failure::Store(cowstore::Error::NotFound)) => sink(&Line::Error(
                "no such file or directory in the last commit (if it is new: cowfs sync \
                 MOUNTPOINT, then ask again)"
                    .into(),
            )),
            Err(Failure::Store(e)) => sink(&Line::Error(e.to_string())),
            Err(Failure::Sink(e)) => Err(e),
        }
    }
}

enum Failure {
    Store(cowstore::Error),
    Sink(io::Error),
}

impl From<cowstore::Error> for Failure {
    fn from(e: cowstore::Error) -> Failure {
        Failure::Store(e)
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        Failure::Sink(e)
    }
}

fn answer(store: &Store, req: &Request, sink: Sink<'_>) -> Result<(), Failure> {
    match req {
        Request::Du { at, summarize } => {
            for row in store.du_report(at, *summarize)? {
                sink(&Line::Du(row))?;
            }
        }
        Request::Inspect { at } => {
            let mut inode = store.inode_report(at)?;
            let extents = std::mem::take(&mut inode.extents);
            sink(&Line::Inode(inode))?;
            for e in extents {
                sink(&Line::Extent(e))?;
            }
        }
        Request::Summary => sink(&Line::Summary(store.committed_summary()?))?,
        Request::Check => {
            let report = store.check()?;
            sink(&Line::Checked {
                generation: report.generation,
                inodes: report.inodes,
                directories: report.directories,
                extents: report.extents,
            })?;
            let wanted: HashSet<u64> = report.problems.iter().filter_map(|p| p.ino).collect();
            for p in report.problems {
                sink(&Line::Problem(p))?;
            }
            if !wanted.is_empty() {
                // Names help; a store too damaged to walk still has its problems reported.
                for (ino, path) in store.committed_paths_of(&wanted).unwrap_or_default() {
                    sink(&Line::Path(ino, path))?;
                }
            }
        }
    }
    Ok(())
}
