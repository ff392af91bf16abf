//! Crash states with reordered and torn writes (issue 10). A workload with several commits runs on
//! a recording `MemEnv`; the model (tree, bytes, xattrs) is remembered at every commit. The log is
//! then replayed through `io::DeviceModel`: each file's operations up to its own last sync are
//! durable (a sync of `pool` makes nothing of `meta.redb` durable, and the other way round); those
//! after it are volatile, and a power cut may keep any subset of them, each whole or torn at
//! 512-byte sectors. Truncates and punches are volatile too (kept or lost, never torn).
//!
//! Images tried:
//! - at every cut just before a sync (and at the end of the log): every subset of the last 8
//!   volatile operations, with all older volatile ones lost and with all of them kept; and each
//!   of those 8 writes torn four ways (first half, second half, even or odd sectors), everything
//!   else kept or everything else lost;
//! - at every cut point: `COWFS_CRASH_SAMPLES` random images (default 4): each volatile
//!   operation lost, kept whole, torn (the four ways above, or a random subset of sectors), or
//!   (a write) only the file size it set, its bytes lost.
//! - a crash during the recovery from a crash: images taken before syncs are opened (recovery),
//!   written to and committed on a recording env, and every cut of that log is tried again.
//!
//! Every image must open, check clean, and be exactly one committed state: the last commit that
//! had returned before the cut, or the one in flight at the cut. Every few images the recovered
//! store must also take new writes, commit and reopen.
//!
//! Soak: `COWFS_CRASH_SAMPLES=200 COWFS_CRASH_SEED=random cargo test --release -p cowstore --test
//! crash_reorder` (the seed is printed; give it back as `COWFS_CRASH_SEED=0x...` to replay).

#[macro_use]
mod engines;
mod common;

use common::*;
use cowfs_test_support::Rng;
use cowstore::io::{DeviceModel, MemEnv, MemOp, Persist};
use cowstore::*;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::Arc;

type Files = BTreeMap<String, Vec<u8>>;

/// A commit: where in the log it started and where it had returned, and the state it made durable.
#[derive(Clone, Debug)]
struct CommitPoint {
    start: usize,
    end: usize,
    snap: Snapshot,
    xattrs: XattrSnapshot,
}

fn p(s: &str) -> Target {
    Target::Path(s.into())
}

fn x(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// Every kind of change, committed in several steps, some left uncommitted at the end: small and
/// large writes, overwrites of committed and of shared data, appends, reflinks, truncates both
/// ways, punches, unlinks (of an open file too), renames (replacing too), xattrs, a reopen.
fn workload(bs: u64) -> Vec<Act> {
    use Act::*;
    let b = bs as usize;
    vec![
        Mkdir("d".into()),
        Create("a".into()),
        Write(p("a"), 0, pattern(1, 3 * b + 100)),
        Create("big".into()),
        Write(p("big"), 0, pattern(2, 40 * b + 77)),
        SetXattr("a".into(), x("user.one"), x("first")),
        SetXattr("d".into(), x("user.dir"), pattern(3, 300)),
        Symlink("l".into(), x("a")),
        Commit,
        // Overwrites of committed data (small, unaligned; large, aligned), an append, a reflink
        // and an overwrite of the shared range, an xattr replaced.
        Write(p("a"), 100, pattern(4, 50)),
        Write(p("big"), 10 * bs, pattern(5, 8 * b)),
        Write(p("a"), 3 * bs + 100, pattern(6, 5000)),
        Create("c".into()),
        Clone(p("big"), 0, p("c"), 0, u64::MAX),
        Write(p("c"), 5 * bs + 3, pattern(7, 200)),
        SetXattr("a".into(), x("user.one"), x("second, replacing the first")),
        Commit,
        // Shrink a shared file, punch (aligned and not), rename, unlink, xattrs removed and added.
        Truncate(p("big"), 20 * bs + 5),
        Punch(p("c"), 2 * bs, 3 * bs),
        Punch(p("a"), 10, 100),
        ZeroRange(p("big"), 3 * bs - 5, bs + 10, false),
        Rename("c".into(), "d/c".into(), RenameFlags::default()),
        Unlink("l".into()),
        RemoveXattr("a".into(), x("user.one")),
        SetXattr("d/c".into(), x("user.new"), pattern(8, 1000)),
        Commit,
        // An open file unlinked and written to; a rename replacing a committed file; a clone of
        // part of a file into another at an unaligned offset (copied, not shared).
        Open("a".into()),
        Unlink("a".into()),
        Write(Target::Handle(0), 0, pattern(9, 2 * b)),
        Create("e".into()),
        Write(p("e"), 0, pattern(10, 100)),
        Clone(p("d/c"), bs, p("e"), 100, 3 * bs),
        Open("big".into()),
        Rename("e".into(), "big".into(), RenameFlags::default()),
        Commit,
        // Release one orphan; grow by truncate, then append across the old end.
        Release(0),
        Truncate(p("d/c"), 30 * bs),
        Write(p("d/c"), 30 * bs - 10, pattern(11, 3 * b)),
        Commit,
        // The other orphan is still open: the open after the reopen reclaims it.
        Reopen,
        // Many small overwrites: many B-tree pages change in one commit.
        Write(p("d/c"), 0, pattern(12, 10)),
        Write(p("d/c"), 7 * bs + 1, pattern(13, 10)),
        Write(p("d/c"), 13 * bs + 2, pattern(14, 10)),
        Write(p("big"), 2 * bs, pattern(15, 2 * b)),
        SetXattr("big".into(), x("user.big"), pattern(16, 2000)),
        Rename("d/c".into(), "c2".into(), RenameFlags::default()),
        Rmdir("d".into()),
        Commit,
        // Never committed: must never be seen after a crash.
        Write(p("big"), 0, pattern(17, 20_000)),
        Create("f".into()),
        Write(p("f"), 0, pattern(18, 9000)),
        SetXattr("f".into(), x("user.f"), x("never")),
    ]
}

/// Metadata that outgrows the B-tree file: large xattrs on many files make redb grow
/// `meta.redb` (a volatile set_len until its sync), then deleting most of them frees its pages.
fn growth_workload(bs: u64) -> Vec<Act> {
    use Act::*;
    let mut w = vec![Mkdir("m".into())];
    for i in 0..24u64 {
        let f = format!("m/f{i}");
        w.push(Create(f.clone()));
        w.push(Write(p(&f), i * 100, pattern(100 + i, 300)));
        w.push(SetXattr(f, x("user.big"), pattern(200 + i, 60_000)));
    }
    w.push(Commit);
    for i in 0..24u64 {
        let f = format!("m/f{i}");
        if i % 3 == 0 {
            w.push(SetXattr(f, x("user.big"), pattern(300 + i, 1000)));
        } else {
            w.push(Unlink(f));
        }
    }
    w.push(Create("m/after".into()));
    w.push(Write(p("m/after"), bs - 1, pattern(400, 2)));
    w.push(Commit);
    w.push(Reopen);
    w.push(SetXattr("m/f0".into(), x("user.big"), pattern(500, 65_536)));
    w.push(Commit);
    w
}

/// Run a workload on a recording store; returns the files as mkfs left them, the log, and the
/// commit points (the first is mkfs itself).
fn record(bs: u32, workload: fn(u64) -> Vec<Act>) -> (Files, Vec<MemOp>, Vec<CommitPoint>) {
    let env = MemEnv::new();
    Store::mkfs_env(Arc::new(env.clone()), &engines::mkfs_opts(bs)).expect("mkfs");
    let base = env.files();
    env.set_recording(true);
    let empty = Model::new();
    let point = |start, end, m: &Model| CommitPoint {
        start,
        end,
        snap: m.snapshot(),
        xattrs: m.xattr_snapshot(),
    };
    let commits = Rc::new(RefCell::new(vec![point(0, 0, &empty)]));
    let mut h = Harness::on_env(env.clone(), bs);
    // Opening commits once (marks the store in use).
    commits.borrow_mut().push(point(0, env.log_len(), &empty));
    let sink = commits.clone();
    h.on_commit = Some(Box::new(move |start, end, model: &Model| {
        sink.borrow_mut().push(point(start, end, model));
    }));
    for act in workload(u64::from(bs)) {
        h.apply(&act).expect("workload step");
        h.verify();
    }
    let log = env.log();
    let commits = commits.borrow().clone();
    (base, log, commits)
}

/// What a power cut keeps of one volatile operation. Only writes are torn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Keep {
    Lost,
    Whole,
    FirstHalf,
    SecondHalf,
    Even,
    Odd,
    /// Each sector kept or not, by a generator seeded with this.
    Scatter(u64),
    /// The size a write gave its file, none of its bytes.
    SizeOnly,
}

const TORN: [Keep; 4] = [Keep::FirstHalf, Keep::SecondHalf, Keep::Even, Keep::Odd];

impl Keep {
    fn persist(self, op: &MemOp) -> Persist {
        let n = op.sectors().len();
        let pick = |f: &dyn Fn(usize) -> bool| Persist::Sectors((0..n).filter(|&i| f(i)).collect());
        match self {
            Keep::Lost => Persist::Lost,
            Keep::Whole => Persist::Whole,
            Keep::SizeOnly => Persist::SizeOnly,
            _ if !matches!(op, MemOp::Write { .. }) => Persist::Whole,
            Keep::FirstHalf => pick(&|i| i < n / 2),
            Keep::SecondHalf => pick(&|i| i >= n / 2),
            Keep::Even => pick(&|i| i % 2 == 0),
            Keep::Odd => pick(&|i| i % 2 == 1),
            Keep::Scatter(seed) => {
                let mut rng = Rng::new(seed);
                let keep: Vec<bool> = (0..n).map(|_| rng.next_u64() % 2 == 0).collect();
                pick(&|i| keep[i])
            }
        }
    }
}

/// `COWFS_CRASH_SEED`: a number (decimal or 0x-hex), or `random`; a fixed default otherwise.
fn seed() -> u64 {
    match std::env::var("COWFS_CRASH_SEED") {
        Ok(s) if s == "random" => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
        Ok(s) => {
            let t = s.trim();
            let parsed = match t.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => t.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("COWFS_CRASH_SEED={s}: {e}"))
        }
        Err(_) => 0xC0F5_0010_5EED_0001,
    }
}

/// `COWFS_CRASH_SAMPLES`: random images per cut point.
fn samples() -> usize {
    std::env::var("COWFS_CRASH_SAMPLES")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4)
}

/// One crash image to try: what is kept of each volatile operation at a cut.
struct Image<'a> {
    dev: &'a DeviceModel,
    keep: Vec<Keep>,
    what: String,
}

impl Image<'_> {
    fn files(&self) -> Files {
        self.dev.image(|i, op| self.keep[i].persist(op))
    }

    /// The kept operations, for a failure message: log index, file, range, how kept.
    fn describe(&self) -> String {
        let mut out = Vec::new();
        for ((at, op), k) in self.dev.volatile().iter().zip(&self.keep) {
            let what = match op {
                MemOp::Write { file, off, data } => {
                    format!("write {file} {off}+{}", data.len())
                }
                MemOp::SetLen { file, len } => format!("set_len {file} {len}"),
                MemOp::Punch { file, off, len } => format!("punch {file} {off}+{len}"),
                MemOp::Sync { file } => format!("sync {file}"),
            };
            out.push(format!("  #{at} {what}: {k:?}"));
        }
        out.join("\n")
    }
}

/// The outcome of one sweep.
#[derive(Default)]
struct Tally {
    images: usize,
    deep: usize,
    in_flight_lost: usize,
    in_flight_kept: usize,
    failures: Vec<String>,
}

const MAX_REPORTED: usize = 8;

/// Open a crash image and prove it is one of the allowed committed states and checks clean; when
/// `deep`, also that the recovered store takes writes, commits and reopens.
fn verify_image(files: Files, allowed: &[&CommitPoint], deep: bool) -> Result<Outcome, String> {
    let env = MemEnv::from_files(files);
    let store = Store::open_env(Arc::new(env.clone()), &open_opts())
        .map_err(|e| format!("the image does not open: {e}"))?;
    let report = store.check().map_err(|e| format!("check fails: {e}"))?;
    if !report.is_clean() {
        return Err(format!("check is not clean: {:#?}", report.problems));
    }
    let snap = snapshot_store(&store).map_err(|e| format!("walking the tree: {e}"))?;
    let xattrs = snapshot_xattrs(&store, &snap).map_err(|e| format!("reading xattrs: {e}"))?;
    let same = |a: &CommitPoint, b: &CommitPoint| a.snap == b.snap && a.xattrs == b.xattrs;
    let matched = allowed
        .iter()
        .position(|c| c.snap == snap && c.xattrs == xattrs);
    let in_flight = allowed.iter().skip(1).any(|c| !same(c, allowed[0]));
    let Some(matched) = matched else {
        let diffs: Vec<String> = allowed
            .iter()
            .map(|c| {
                let xd = if c.xattrs == xattrs {
                    String::new()
                } else {
                    format!("; xattrs differ: got {xattrs:?}, want {:?}", c.xattrs)
                };
                format!(
                    "commit at log {}..{}: {}{xd}",
                    c.start,
                    c.end,
                    snapshot_diff(&snap, &c.snap)
                )
            })
            .collect();
        return Err(format!(
            "not an allowed committed state:\n{}",
            diffs.join("\n")
        ));
    };
    let outcome = match matched {
        0 if in_flight => Outcome::InFlightLost,
        0 => Outcome::Settled,
        _ => Outcome::InFlightKept,
    };
    if !deep {
        return Ok(outcome);
    }
    // New data goes to blocks that were free in the image, whose old bytes may still be there
    // (unpunched, or torn writes of a lost commit): none of them may show, in a new file or past
    // the end of an old one.
    let f = store
        .create(InodeNo::ROOT, b"after-crash", &NewInode::regular(0o644), ME)
        .map_err(|e| format!("create after recovery: {e}"))?;
    let mut want_new = vec![0u8; 40_000];
    let data = pattern(99, 10_000);
    let dot = pattern(98, 3);
    let grow = SetAttr {
        size: Some(40_000),
        ..Default::default()
    };
    (|| -> Result<()> {
        store.write(f.ino, 10, &data)?;
        store.setattr(f.ino, &grow)?;
        store.write(f.ino, 30_000, &dot)?;
        Ok(())
    })()
    .map_err(|e| format!("writing a new file after recovery: {e}"))?;
    write_into(&mut want_new, 10, &data);
    write_into(&mut want_new, 30_000, &dot);
    let mut want = vec![(f.ino, "/after-crash".to_string(), want_new)];
    if let Some((path, e)) = snap
        .iter()
        .find(|(_, e)| e.kind == FileKind::Regular && e.bytes.len() > 10)
    {
        let mut bytes = e.bytes.clone();
        let gap = bytes.len() as u64 + 5000;
        (|| -> Result<()> {
            store.write(InodeNo(e.ino), 5, b"post-crash")?;
            store.write(InodeNo(e.ino), gap, b"appended")?;
            Ok(())
        })()
        .map_err(|err| format!("writing to /{path} after recovery: {err}"))?;
        write_into(&mut bytes, 5, b"post-crash");
        write_into(&mut bytes, gap, b"appended");
        want.push((InodeNo(e.ino), format!("/{path}"), bytes));
    }
    let compare = |store: &Store, when: &str| -> Result<(), String> {
        for (ino, path, bytes) in &want {
            let got = store
                .read_to_vec(*ino, 0, bytes.len() as u64 + 100)
                .map_err(|e| format!("reading {path} {when}: {e}"))?;
            if got != *bytes {
                let at = got.iter().zip(bytes).position(|(a, b)| a != b);
                return Err(format!(
                    "{path} {when}: {} bytes, want {}; first difference at {at:?}",
                    got.len(),
                    bytes.len()
                ));
            }
        }
        Ok(())
    };
    compare(&store, "after writing to the recovered store")?;
    store
        .commit()
        .map_err(|e| format!("commit after recovery: {e}"))?;
    let report = store.check().map_err(|e| format!("check fails: {e}"))?;
    if !report.is_clean() {
        return Err(format!(
            "check after writing to the recovered store: {:#?}",
            report.problems
        ));
    }
    store.close().map_err(|e| format!("close: {e}"))?;
    let store = Store::open_env(Arc::new(env), &open_opts())
        .map_err(|e| format!("reopen after recovery: {e}"))?;
    compare(&store, "after a commit and a reopen")?;
    Ok(outcome)
}

/// Which state an image that passed showed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// No commit was in flight (or it changed nothing): the last one that returned.
    Settled,
    /// A commit was in flight and the image shows the one before it.
    InFlightLost,
    /// A commit was in flight and the image shows it.
    InFlightKept,
}

/// Verify one image (a panic inside the store counts as a failure) and tally the outcome.
fn try_image(img: &Image, allowed: &[&CommitPoint], deep: bool, seed: u64, tally: &mut Tally) {
    let files = img.files();
    let outcome = catch_unwind(AssertUnwindSafe(|| verify_image(files, allowed, deep)))
        .unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("panicked: {msg}"))
        });
    tally.images += 1;
    if deep {
        tally.deep += 1;
    }
    match outcome {
        Ok(Outcome::Settled) => {}
        Ok(Outcome::InFlightLost) => tally.in_flight_lost += 1,
        Ok(Outcome::InFlightKept) => tally.in_flight_kept += 1,
        Err(_) => {}
    }
    if let Err(e) = outcome {
        if tally.failures.len() < MAX_REPORTED {
            tally.failures.push(format!(
                "seed {seed:#x}, cut {} ({}): {e}\nvolatile operations:\n{}",
                img.dev.cut(),
                img.what,
                img.describe()
            ));
        } else {
            tally.failures.push(String::new());
        }
    }
}

/// The images tried exhaustively at one cut: every subset of the last 8 volatile operations (the
/// older ones all lost, or all kept), then each of those 8 writes torn four ways.
fn exhaustive(dev: &DeviceModel) -> Vec<(Vec<Keep>, String)> {
    let n = dev.volatile().len();
    let last = n.min(8);
    let older = n - last;
    let mut out = Vec::new();
    let older_modes: &[Keep] = if older == 0 {
        &[Keep::Lost]
    } else {
        &[Keep::Lost, Keep::Whole]
    };
    for &old in older_modes {
        for mask in 0u32..(1 << last) {
            let mut keep = vec![old; older];
            keep.extend((0..last).map(|i| {
                if mask & (1 << i) != 0 {
                    Keep::Whole
                } else {
                    Keep::Lost
                }
            }));
            out.push((
                keep,
                format!("older {old:?}, subset {mask:#b} of the last {last}"),
            ));
        }
    }
    for i in older..n {
        if dev.volatile()[i].1.sectors().len() < 2 {
            continue;
        }
        for torn in TORN {
            for rest in [Keep::Whole, Keep::Lost] {
                let mut keep = vec![rest; n];
                keep[i] = torn;
                out.push((
                    keep,
                    format!("#{} torn {torn:?}, the rest {rest:?}", dev.volatile()[i].0),
                ));
            }
        }
    }
    out
}

/// A random image: every other one keeps most operations whole (so that a commit in flight is
/// often complete but for a few writes), the others mix all ways evenly.
fn random_keep(rng: &mut Rng, n: usize, mostly_kept: bool) -> Vec<Keep> {
    (0..n)
        .map(|_| {
            let r = rng.next_u64() % 20;
            if mostly_kept {
                return match r {
                    0 => Keep::Lost,
                    1 => TORN[(rng.next_u64() % 4) as usize],
                    _ => Keep::Whole,
                };
            }
            match r {
                0..=7 => Keep::Lost,
                8..=13 => Keep::Whole,
                14..=15 => TORN[(rng.next_u64() % 4) as usize],
                16..=18 => Keep::Scatter(rng.next_u64()),
                _ => Keep::SizeOnly,
            }
        })
        .collect()
}

/// Every few images the recovered store is also written to, committed and reopened.
const DEEP_EVERY: usize = 5;

/// The commits an image at a cut may show: the newest that had returned, and one in flight.
fn allowed_at(commits: &[CommitPoint], cut: usize) -> Vec<&CommitPoint> {
    let last_done = commits
        .iter()
        .rposition(|c| c.end <= cut)
        .expect("the first commit point is the starting state");
    commits
        .iter()
        .enumerate()
        .filter(|(i, c)| *i == last_done || (*i > last_done && c.start < cut))
        .map(|(_, c)| c)
        .collect()
}

/// Try crash images at every cut of `log` (recorded over the files `base`): `samples` random
/// ones everywhere, and when `exhaustive`, the enumerated ones before every sync and at the end.
/// `run` hands the first random image of each cut before a sync to `on_image` too.
struct Sweep<'a> {
    base: Files,
    log: &'a [MemOp],
    commits: &'a [CommitPoint],
    exhaustive: bool,
    samples: usize,
    seed: u64,
}

impl Sweep<'_> {
    fn run(&self, rng: &mut Rng, tally: &mut Tally, mut on_image: impl FnMut(usize, Files)) {
        let mut dev = DeviceModel::new(self.base.clone());
        for cut in 0..=self.log.len() {
            if cut > 0 {
                dev.step(&self.log[cut - 1]);
            }
            let allowed = allowed_at(self.commits, cut);
            let mut images = Vec::new();
            let before_sync =
                matches!(self.log.get(cut), Some(MemOp::Sync { .. })) || cut == self.log.len();
            if self.exhaustive && before_sync {
                images.extend(exhaustive(&dev));
            }
            for round in 0..self.samples {
                let keep = random_keep(rng, dev.volatile().len(), round % 2 == 1);
                images.push((keep, format!("random image {round}")));
            }
            for (keep, what) in images {
                let img = Image {
                    dev: &dev,
                    keep,
                    what,
                };
                let deep = (tally.images + 1) % DEEP_EVERY == 0;
                try_image(&img, &allowed, deep, self.seed, tally);
                if before_sync && img.what == "random image 0" {
                    on_image(cut, img.files());
                }
            }
        }
    }
}

impl Tally {
    fn assert_clean(&self, what: &str, seed: u64) {
        if self.failures.is_empty() {
            return;
        }
        let shown: Vec<&str> = self
            .failures
            .iter()
            .filter(|f| !f.is_empty())
            .map(|s| s.as_str())
            .collect();
        panic!(
            "{what}, seed {seed:#x}: {} of {} crash images failed; the first {}:\n\n{}",
            self.failures.len(),
            self.images,
            shown.len(),
            shown.join("\n\n")
        );
    }
}

fn sweep(bs: u32, workload: fn(u64) -> Vec<Act>) {
    let seed = seed();
    let samples = samples();
    let (base, log, commits) = record(bs, workload);
    let count = |f: fn(&MemOp) -> bool| log.iter().filter(|op| f(op)).count();
    let syncs = count(|op| matches!(op, MemOp::Sync { .. }));
    let set_lens = count(|op| matches!(op, MemOp::SetLen { .. }));
    let punches = count(|op| matches!(op, MemOp::Punch { .. }));
    eprintln!(
        "block size {bs}: {} recorded operations ({syncs} syncs, {set_lens} set_len, {punches} \
         punches), {} commits; seed {seed:#x}, {samples} random images per cut",
        log.len(),
        commits.len()
    );
    assert!(commits.len() >= 5, "the workload commits often");
    let mut rng = Rng::new(seed ^ u64::from(bs));
    let mut tally = Tally::default();
    Sweep {
        base,
        log: &log,
        commits: &commits,
        exhaustive: true,
        samples,
        seed,
    }
    .run(&mut rng, &mut tally, |_, _| {});
    eprintln!(
        "block size {bs}: verified {} crash images ({} also written to and reopened); with a \
         commit in flight, {} showed the commit before it and {} the commit itself",
        tally.images, tally.deep, tally.in_flight_lost, tally.in_flight_kept
    );
    tally.assert_clean(&format!("block size {bs}"), seed);
    // The images reach both sides of the commits' atomic points.
    assert!(
        tally.in_flight_lost >= commits.len() && tally.in_flight_kept >= commits.len(),
        "too few images on one side of a commit"
    );
}

/// The state of a store as a commit point.
fn store_point(store: &Store, start: usize, end: usize) -> Result<CommitPoint> {
    let snap = snapshot_store(store)?;
    let xattrs = snapshot_xattrs(store, &snap)?;
    Ok(CommitPoint {
        start,
        end,
        snap,
        xattrs,
    })
}

/// A crash while recovering from a crash: a crash image is opened (the recovery after an unclean
/// stop: orphans reclaimed, free space punched again, the pool trimmed, a commit), written to and
/// committed, on a recording `MemEnv`; every cut of that second log must again open at one
/// committed state: the image's own, or one of the commits after it.
fn recovery_sweep(bs: u32) {
    let seed = seed();
    let samples = samples();
    let (base, log, commits) = record(bs, workload);
    let mut rng = Rng::new(seed ^ u64::from(bs) ^ 0x2EC0_7E2F);
    let mut first = Tally::default();
    let mut firsts = Vec::new();
    Sweep {
        base,
        log: &log,
        commits: &commits,
        exhaustive: false,
        samples: 1,
        seed,
    }
    .run(&mut rng, &mut first, |cut, files| firsts.push((cut, files)));
    first.assert_clean(&format!("block size {bs}, first crash"), seed);
    let mut tally = Tally::default();
    for (cut, files) in firsts {
        let env = MemEnv::from_files(files.clone());
        env.set_recording(true);
        let store = Store::open_env(Arc::new(env.clone()), &open_opts()).expect("open image");
        let start = store_point(&store, 0, 0).expect("walk");
        let opened = CommitPoint {
            end: env.log_len(),
            ..start.clone()
        };
        let mut points = vec![start, opened];
        // New data, an overwrite of existing data, an xattr; then a deletion.
        let c0 = env.log_len();
        let f = store
            .create(InodeNo::ROOT, b"r", &NewInode::regular(0o644), ME)
            .expect("create");
        store
            .write(f.ino, 0, &pattern(50, 3 * bs as usize / 2))
            .expect("write");
        let existing = points[0]
            .snap
            .values()
            .find(|e| e.kind == FileKind::Regular && e.bytes.len() > bs as usize)
            .map(|e| InodeNo(e.ino));
        if let Some(ino) = existing {
            store
                .write(ino, u64::from(bs) - 7, &pattern(51, 100))
                .expect("overwrite");
        }
        store
            .setxattr(InodeNo::ROOT, b"user.r", b"after recovery", 0)
            .expect("setxattr");
        store.commit().expect("commit");
        points.push(store_point(&store, c0, env.log_len()).expect("walk"));
        let c1 = env.log_len();
        store.unlink(InodeNo::ROOT, b"r").expect("unlink");
        store.commit().expect("commit");
        points.push(store_point(&store, c1, env.log_len()).expect("walk"));
        let c2 = env.log_len();
        let last = points[3].clone();
        store.close().expect("close");
        points.push(CommitPoint {
            start: c2,
            end: env.log_len(),
            ..last
        });
        let log2 = env.log();
        let before = tally.failures.len();
        Sweep {
            base: files,
            log: &log2,
            commits: &points,
            exhaustive: false,
            samples,
            seed,
        }
        .run(&mut rng, &mut tally, |_, _| {});
        if tally.failures.len() > before {
            if let Some(f) = tally.failures.get_mut(before).filter(|f| !f.is_empty()) {
                *f = format!("recovering from the image at first cut {cut}: {f}");
            }
        }
    }
    eprintln!(
        "block size {bs}: verified {} crash images of recovery runs; with a commit in flight, \
         {} showed the commit before it and {} the commit itself",
        tally.images, tally.in_flight_lost, tally.in_flight_kept
    );
    tally.assert_clean(&format!("block size {bs}, crash during recovery"), seed);
}

fn crash_reorder_and_tear_bs4k() {
    sweep(4096, workload);
}

fn crash_reorder_and_tear_bs16k() {
    sweep(16384, workload);
}

fn crash_reorder_and_tear_bs64k() {
    sweep(65536, workload);
}

fn crash_reorder_during_recovery_bs4k() {
    recovery_sweep(4096);
}

fn crash_reorder_metadata_growth_bs4k() {
    sweep(4096, growth_workload);
}

/// The checker itself: an image that lost a commit which had returned (its sync of the metadata
/// skipped, its unsynced writes dropped) opens at the commit before, and is rejected.
fn crash_reorder_rejects_an_image_that_lost_a_returned_commit() {
    let (base, log, commits) = record(4096, workload);
    let lost = &commits[4];
    let previous = &commits[3];
    assert_ne!(lost.snap, previous.snap, "the lost commit changed the tree");
    let mut dev = DeviceModel::new(base);
    let mut skipped = 0;
    let meta = engines::engine().meta_file();
    for op in &log[..lost.end] {
        let in_commit = dev.cut() >= lost.start;
        if in_commit && matches!(op, MemOp::Sync { file } if file == meta) {
            skipped += 1;
            // Stand in for the skipped sync so that cut() still counts log positions.
            dev.step(&MemOp::Sync {
                file: "nothing".into(),
            });
            continue;
        }
        dev.step(op);
    }
    assert_eq!(skipped, 1, "one sync of {meta} per commit");
    let files = dev.image(|_, _| Persist::Lost);
    if let Err(e) = verify_image(files.clone(), &[previous], true) {
        panic!("the image should be the previous commit: {e}");
    }
    let allowed = allowed_at(&commits, lost.end);
    let err = verify_image(files, &allowed, false).expect_err("a lost commit must be rejected");
    assert!(err.contains("not an allowed committed state"), "{err}");
}

per_engine!(
    crash_reorder_and_tear_bs4k,
    crash_reorder_and_tear_bs16k,
    crash_reorder_and_tear_bs64k,
    crash_reorder_during_recovery_bs4k,
    crash_reorder_metadata_growth_bs4k,
    crash_reorder_rejects_an_image_that_lost_a_returned_commit,
);
