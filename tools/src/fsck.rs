//! `cowfs fsck`: prove a store consistent with cowstore's own check API, and repair it.
//! Exit codes follow e2fsck: 0 clean, 1 errors corrected, 4 errors left uncorrected,
//! 8 operational error (store in use, not a store, I/O). A mounted store is checked by its
//! daemon: the last commit, read-only, while the mount keeps serving; `--repair` and `--scrub`
//! of a mounted store are refused (exit 8).

use crate::human::Progress;
use crate::inspect::{locate, Located};
use cowfs_fs::control;
use cowfs_fs::live::{Line, Request};
use cowstore::{CheckReport, Error, OpenOptions, Problem, ProblemKind, Store};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

pub const EXIT_CLEAN: i32 = 0;
pub const EXIT_CORRECTED: i32 = 1;
pub const EXIT_UNCORRECTED: i32 = 4;
pub const EXIT_OPERATIONAL: i32 = 8;

#[derive(clap::Args, Debug)]
pub struct FsckArgs {
    /// The store directory (mounted or not), or the mountpoint of a cowfs mount.
    pub store: PathBuf,
    /// Fix what is safely fixable (leaks, refcounts, link counts, orphans, lost+found, inodes
    /// rebuilt from their extents) and commit; blocks a record points at are never freed.
    #[arg(long)]
    pub repair: bool,
    /// Print the result as one JSON document.
    #[arg(long)]
    pub json: bool,
    /// Also read every referenced data block to prove it is readable.
    #[arg(long)]
    pub scrub: bool,
}

#[derive(Serialize)]
struct FsckJson<'a> {
    store: String,
    clean: bool,
    generation: u64,
    inodes: u64,
    directories: u64,
    extents: u64,
    problems: Vec<JsonProblem<'a>>,
    repaired: Vec<String>,
    unfixable: Vec<String>,
    problems_after_repair: Vec<JsonProblem<'a>>,
    exit_code: i32,
}

#[derive(Serialize)]
struct JsonProblem<'a> {
    #[serde(flatten)]
    problem: &'a Problem,
    path: Option<String>,
}

pub fn run(args: &FsckArgs) -> i32 {
    // Damaged metadata can make the B-tree library panic (debug builds do so on purpose); the
    // store turns that into errors, and anything left is caught here and reported as one line
    // (the panic hook of `bug` keeps the message, and prints nothing, on this thread).
    match std::panic::catch_unwind(|| fsck(args)) {
        Ok(code) => code,
        Err(_) => {
            let what = crate::bug::take().map(|r| r.what).unwrap_or_default();
            err!(
                "cowfs fsck: {}: the metadata is damaged beyond what can be checked ({what})",
                args.store.display()
            );
            EXIT_UNCORRECTED
        }
    }
}

fn open_error(store: &std::path::Path, e: &Error) -> i32 {
    match e {
        Error::InUse { holder, .. } => {
            let who = holder
                .map(|p| format!(" by process {p}"))
                .unwrap_or_default();
            err!(
                "cowfs fsck: {}: store is in use{who}, but not by a cowfs mount of this mount namespace (whose daemon would check it live); close it or run fsck where it is mounted",
                store.display()
            );
            EXIT_OPERATIONAL
        }
        Error::Corrupted(_) | Error::UnsupportedFormat { .. } => {
            err!("cowfs fsck: {}: {e}", store.display());
            EXIT_UNCORRECTED
        }
        _ => {
            err!("cowfs fsck: {}: {e}", store.display());
            EXIT_OPERATIONAL
        }
    }
}

fn fsck(args: &FsckArgs) -> i32 {
    match locate(&args.store) {
        Located::Offline => fsck_offline(args),
        Located::MountedStore(mp) => fsck_live(args, &mp),
        Located::InMount(_) => fsck_live(args, &args.store),
    }
}

/// A mounted store: its daemon checks the last commit read-only (the same `Store::check`), while
/// the mount keeps serving. Repair needs the store to itself.
fn fsck_live(args: &FsckArgs, via: &std::path::Path) -> i32 {
    let refuse = |what: &str| {
        err!(
            "cowfs fsck: {}: {what} of a mounted store is not possible; unmount it first (without it, the last commit is checked read-only while mounted)",
            args.store.display()
        );
        EXIT_OPERATIONAL
    };
    if args.repair {
        return refuse("--repair");
    }
    if args.scrub {
        return refuse("--scrub");
    }
    let mut report = CheckReport::default();
    let mut paths = HashMap::new();
    let asked = control::report(via, &Request::Check, |line| {
        match line {
            Line::Checked {
                generation,
                inodes,
                directories,
                extents,
            } => {
                report.generation = generation;
                report.inodes = inodes;
                report.directories = directories;
                report.extents = extents;
            }
            Line::Problem(p) => report.problems.push(p),
            Line::Path(ino, path) => {
                paths.insert(ino, path);
            }
            _ => {}
        }
        Ok(())
    });
    if let Err(e) = asked {
        err!("cowfs fsck: {}: {e}", args.store.display());
        return EXIT_OPERATIONAL;
    }
    let problems = report.problems.clone();
    let code = if problems.is_empty() {
        EXIT_CLEAN
    } else {
        EXIT_UNCORRECTED
    };
    finish(
        args,
        &report,
        &problems,
        &paths,
        Vec::new(),
        Vec::new(),
        Vec::new(),
        code,
    )
}

fn fsck_offline(args: &FsckArgs) -> i32 {
    let opts = OpenOptions {
        read_only: !args.repair,
        commit_interval: None,
        ..Default::default()
    };
    let store = match Store::open(&args.store, &opts) {
        Ok(s) => s,
        Err(e) => return open_error(&args.store, &e),
    };
    let mut bar = Progress::new();
    let report =
        match store.check_with_progress(&mut |phase, done, total| bar.update(phase, done, total)) {
            Ok(r) => r,
            Err(e) => {
                bar.finish();
                return open_error(&args.store, &e);
            }
        };
    bar.finish();
    let mut problems = report.problems.clone();
    if args.scrub {
        match scrub(&store, &mut bar) {
            Ok(mut p) => problems.append(&mut p),
            Err(e) => return open_error(&args.store, &e),
        }
    }
    let paths = paths_for(&store, &problems);

    let (mut repaired, mut unfixable, mut after) = (Vec::new(), Vec::new(), Vec::new());
    let mut code = if problems.is_empty() {
        EXIT_CLEAN
    } else {
        EXIT_UNCORRECTED
    };
    if args.repair && !problems.is_empty() {
        match store.repair() {
            Ok(sum) => {
                repaired = sum.actions;
                unfixable = sum.unfixable;
                match store.check() {
                    Ok(r) => after = r.problems,
                    Err(e) => return open_error(&args.store, &e),
                }
                code = if after.is_empty() && unfixable.is_empty() {
                    EXIT_CORRECTED
                } else {
                    EXIT_UNCORRECTED
                };
            }
            Err(e) => {
                err!("cowfs fsck: repair failed: {e}");
                code = EXIT_UNCORRECTED;
            }
        }
    }
    if let Err(e) = store.close() {
        err!("cowfs fsck: closing the store: {e}");
        return EXIT_OPERATIONAL;
    }
    finish(
        args, &report, &problems, &paths, repaired, unfixable, after, code,
    )
}

/// Print the outcome (text or JSON) the same way for a live and an offline check; the exit code.
#[allow(clippy::too_many_arguments)]
fn finish(
    args: &FsckArgs,
    report: &CheckReport,
    problems: &[Problem],
    paths: &HashMap<u64, String>,
    repaired: Vec<String>,
    unfixable: Vec<String>,
    after: Vec<Problem>,
    code: i32,
) -> i32 {
    if args.json {
        let doc = FsckJson {
            store: args.store.display().to_string(),
            clean: problems.is_empty(),
            generation: report.generation,
            inodes: report.inodes,
            directories: report.directories,
            extents: report.extents,
            problems: json_problems(problems, paths),
            repaired,
            unfixable,
            problems_after_repair: json_problems(&after, paths),
            exit_code: code,
        };
        match serde_json::to_string_pretty(&doc) {
            Ok(s) => out!("{s}"),
            Err(e) => {
                err!("cowfs fsck: {e}");
                return EXIT_OPERATIONAL;
            }
        }
        return code;
    }
    print_text(
        args, report, problems, paths, &repaired, &unfixable, &after, code,
    );
    code
}

fn json_problems<'a>(
    v: &'a [Problem],
    paths: &std::collections::HashMap<u64, String>,
) -> Vec<JsonProblem<'a>> {
    v.iter()
        .map(|p| JsonProblem {
            problem: p,
            path: p.ino.and_then(|i| paths.get(&i).cloned()),
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn print_text(
    args: &FsckArgs,
    report: &CheckReport,
    problems: &[Problem],
    paths: &std::collections::HashMap<u64, String>,
    repaired: &[String],
    unfixable: &[String],
    after: &[Problem],
    code: i32,
) {
    let line = |p: &Problem| match p.ino.and_then(|i| paths.get(&i)) {
        Some(path) => format!("{p} ({path})"),
        None => p.to_string(),
    };
    for p in problems {
        out!("{}", line(p));
    }
    for a in repaired {
        out!("repaired: {a}");
    }
    for u in unfixable {
        out!("not repaired: {u}");
    }
    for p in after {
        out!("still wrong: {}", line(p));
    }
    let verdict = match code {
        EXIT_CLEAN => "clean".to_string(),
        EXIT_CORRECTED => format!("{} problems found and corrected", problems.len()),
        _ if args.repair => format!(
            "{} problems found, {} left uncorrected",
            problems.len(),
            after.len() + unfixable.len()
        ),
        _ => format!(
            "{} problems found (run with --repair to fix)",
            problems.len()
        ),
    };
    out!(
        "{}: generation {}, {} inodes ({} directories), {} extents: {verdict}",
        args.store.display(),
        report.generation,
        report.inodes,
        report.directories,
        report.extents
    );
}

fn paths_for(store: &Store, problems: &[Problem]) -> std::collections::HashMap<u64, String> {
    let wanted: HashSet<u64> = problems.iter().filter_map(|p| p.ino).collect();
    if wanted.is_empty() {
        return Default::default();
    }
    store.committed_paths_of(&wanted).unwrap_or_default()
}

/// Read every block referenced by a reachable file.
fn scrub(store: &Store, bar: &mut Progress) -> Result<Vec<Problem>, Error> {
    let files = store.files_under(cowstore::InodeNo::ROOT)?;
    let pool = store.pool();
    let mut buf = vec![0u8; 1 << 20];
    let mut problems = Vec::new();
    let bs = u64::from(store.block_size());
    for (i, ino) in files.iter().enumerate() {
        bar.update("scrub", i as u64, files.len() as u64);
        for e in store.extents(*ino)? {
            let mut done = 0;
            while done < e.len {
                let n = (e.len - done).min(buf.len() as u64) as usize;
                if let Err(err) = pool.read_at(&mut buf[..n], e.pool_offset + done) {
                    problems.push(Problem {
                        kind: ProblemKind::Corrupt,
                        ino: Some(ino.0),
                        blocks: Some(((e.pool_offset + done) / bs, n as u64 / bs)),
                        message: format!("data unreadable: {err}"),
                    });
                    break;
                }
                done += n as u64;
            }
        }
    }
    bar.finish();
    Ok(problems)
}
