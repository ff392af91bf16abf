//! Crash-state tests. A workload with several commits (writes, reflinks, overwrites of shared
//! ranges, truncates, unlinks of open files, renames, a reopen) runs on a recording `MemEnv`; the
//! model is remembered at every commit. Then, for every cut point of the recorded log (after every
//! operation, so every sync point too), the image a power cut would leave is built three ways:
//! only what was synced, everything that was issued, and synced plus a random subset of the
//! unsynced writes. Each image must open as exactly one committed state, never older than the
//! last commit that returned before the cut, check clean, and take new writes and a commit.
//!
//! Also: ENOSPC injected at every point of the workload gives `Error::NoSpace` and leaves a store
//! that, once space is back, holds a state the operations allow and keeps working.

#[macro_use]
mod engines;
mod common;

use common::*;
use cowfs_test_support::Rng;
use cowstore::io::{MemEnv, MemOp};
use cowstore::*;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

type Files = BTreeMap<String, Vec<u8>>;

/// A commit: where in the log it started and where it had returned, and the state it made durable.
#[derive(Clone, Debug)]
struct CommitPoint {
    start: usize,
    end: usize,
    snap: Snapshot,
}

fn p(s: &str) -> Target {
    Target::Path(s.into())
}

/// The workload (block size 4096): every kind of change, committed in several steps, with some
/// changes left uncommitted at the end.
fn workload() -> Vec<Act> {
    use Act::*;
    let bs = 4096u64;
    vec![
        Mkdir("d".into()),
        Create("a".into()),
        Write(p("a"), 0, pattern(1, 3 * bs as usize + 100)),
        Create("b".into()),
        Write(p("b"), 1000, pattern(2, 5000)),
        Symlink("l".into(), b"a".to_vec()),
        Commit,
        // Reflink a whole file, then overwrite part of the shared range in both.
        Clone(p("a"), 0, p("b"), 0, u64::MAX),
        Write(p("b"), bs + 4, pattern(3, 300)),
        Write(p("a"), 2 * bs - 96, pattern(4, 2000)),
        Commit,
        // An open file is unlinked; renames; a shrinking truncate of a shared file.
        Create("d/c".into()),
        Open("d/c".into()),
        Write(Target::Handle(0), 0, pattern(5, 10_000)),
        Unlink("d/c".into()),
        Rename("a".into(), "d/a2".into(), RenameFlags::default()),
        Truncate(p("b"), 5000),
        Commit,
        // The orphan is still written to; a self-clone; punch; exchange; a hard link.
        Write(Target::Handle(0), 12_000, pattern(6, 9000)),
        Clone(p("d/a2"), bs, p("d/a2"), 4 * bs, bs),
        Punch(p("b"), 100, 5000),
        Rename(
            "d/a2".into(),
            "b".into(),
            RenameFlags {
                exchange: true,
                noreplace: false,
            },
        ),
        Link("b".into(), "d/blink".into()),
        Commit,
        // Reopening reclaims the orphan.
        Reopen,
        Create("e".into()),
        Clone(p("b"), 0, p("e"), 100, u64::MAX),
        Truncate(p("d/a2"), 30_000),
        ZeroRange(p("e"), 50, 3000, false),
        Write(p("e"), 4000, pattern(7, 6000)),
        Allocate(p("e"), 0, 40_000, false),
        Commit,
        // Replace a file that is open: its data lives on as an orphan until released.
        Open("b".into()),
        Rename("d/a2".into(), "b".into(), RenameFlags::default()),
        Write(Target::Handle(0), 0, pattern(8, 100)),
        Commit,
        Release(0),
        Clone(p("e"), 0, p("d/blink"), 0, u64::MAX),
        Unlink("d/blink".into()),
        Rmdir("d".into()),
        Unlink("l".into()),
        Commit,
        // Never committed: must never be seen after a crash.
        Write(p("b"), 0, pattern(9, 20_000)),
        Create("f".into()),
        Write(p("f"), 0, pattern(10, 9000)),
    ]
}

/// Run the workload on a recording store; returns the files as mkfs left them, the log, and the
/// commit points (the first is mkfs itself).
fn record(bs: u32) -> (Files, Vec<MemOp>, Vec<CommitPoint>) {
    let env = MemEnv::new();
    Store::mkfs_env(Arc::new(env.clone()), &engines::mkfs_opts(bs)).expect("mkfs");
    let base = env.files();
    env.set_recording(true);
    let mkfs_state = Model::new().snapshot();
    let commits = Rc::new(RefCell::new(vec![CommitPoint {
        start: 0,
        end: 0,
        snap: mkfs_state.clone(),
    }]));
    let mut h = Harness::on_env(env.clone(), bs);
    // Opening commits once (marks the store in use).
    commits.borrow_mut().push(CommitPoint {
        start: 0,
        end: env.log().len(),
        snap: mkfs_state,
    });
    let sink = commits.clone();
    h.on_commit = Some(Box::new(move |start, end, model: &Model| {
        sink.borrow_mut().push(CommitPoint {
            start,
            end,
            snap: model.snapshot(),
        });
    }));
    for act in workload() {
        h.apply(&act).expect("workload step");
        h.verify();
    }
    let log = env.log();
    let commits = commits.borrow().clone();
    (base, log, commits)
}

/// Random subsets of unsynced writes tried per cut point.
const SUBSETS: usize = 3;

/// Open a crash image and prove it is one of the allowed committed states, checks clean, and
/// still works.
fn verify_image(files: Files, allowed: &[&CommitPoint], what: &str) {
    let env = MemEnv::from_files(files);
    let store = Store::open_env(Arc::new(env.clone()), &open_opts())
        .unwrap_or_else(|e| panic!("{what}: the image does not open: {e}"));
    let report = store.check().expect("check runs");
    assert!(
        report.is_clean(),
        "{what}: check after crash recovery: {:#?}",
        report.problems
    );
    let snap = snapshot_store(&store).unwrap_or_else(|e| panic!("{what}: walking the tree: {e}"));
    if !allowed.iter().any(|c| c.snap == snap) {
        let diffs: Vec<String> = allowed
            .iter()
            .map(|c| {
                format!(
                    "commit at log {}..{}: {}",
                    c.start,
                    c.end,
                    snapshot_diff(&snap, &c.snap)
                )
            })
            .collect();
        panic!(
            "{what}: the image is not an allowed committed state:\n{}",
            diffs.join("\n")
        );
    }
    // The recovered store takes new data and commits it.
    let f = store
        .create(InodeNo::ROOT, b"after-crash", &NewInode::regular(0o644), ME)
        .unwrap_or_else(|e| panic!("{what}: create after recovery: {e}"));
    let data = pattern(99, 10_000);
    store.write(f.ino, 10, &data).expect("write after recovery");
    if let Some((path, e)) = snap
        .iter()
        .find(|(_, e)| e.kind == FileKind::Regular && e.bytes.len() > 10)
    {
        // Overwrite part of an existing (possibly shared) file too.
        store
            .write(InodeNo(e.ino), 5, b"post-crash")
            .unwrap_or_else(|err| panic!("{what}: overwriting /{path}: {err}"));
    }
    store.commit().expect("commit after recovery");
    let report = store.check().expect("check runs");
    assert!(
        report.is_clean(),
        "{what}: check after writing to the recovered store: {:#?}",
        report.problems
    );
    store.close().expect("close");
    let store = Store::open_env(Arc::new(env), &open_opts()).expect("reopen");
    let f = store.lookup(InodeNo::ROOT, b"after-crash").expect("lookup");
    assert_eq!(
        store.read_to_vec(f.ino, 10, 10_000).expect("read"),
        data,
        "{what}"
    );
}

fn crash_states(bs: u32) {
    let (base, log, commits) = record(bs);
    let syncs = log
        .iter()
        .filter(|op| matches!(op, MemOp::Sync { .. }))
        .count();
    eprintln!(
        "block size {bs}: {} recorded operations, {syncs} syncs, {} commits",
        log.len(),
        commits.len()
    );
    assert!(commits.len() >= 10, "the workload commits often");

    let mut applied = base.clone();
    let mut durable = base;
    let mut pending: BTreeMap<String, Vec<MemOp>> = BTreeMap::new();
    let mut rng = Rng::new(0x5EED_1234_ABCD_0001);
    let mut images = 0usize;
    for cut in 0..=log.len() {
        if cut > 0 {
            let op = &log[cut - 1];
            if let MemOp::Sync { file } = op {
                for o in pending.remove(file).unwrap_or_default() {
                    MemEnv::apply(&mut durable, &o);
                }
            } else {
                MemEnv::apply(&mut applied, op);
                pending
                    .entry(op.file().to_string())
                    .or_default()
                    .push(op.clone());
            }
        }
        // The newest commit that had returned, and any commit in flight at the cut.
        let last_done = commits
            .iter()
            .rposition(|c| c.end <= cut)
            .expect("mkfs state");
        let allowed: Vec<&CommitPoint> = commits
            .iter()
            .enumerate()
            .filter(|(i, c)| *i == last_done || (*i > last_done && c.start < cut))
            .map(|(_, c)| c)
            .collect();

        verify_image(
            durable.clone(),
            &allowed,
            &format!("cut {cut}: synced writes only"),
        );
        verify_image(
            applied.clone(),
            &allowed,
            &format!("cut {cut}: every write issued"),
        );
        // A disk may persist any subset of what was not synced, in any order.
        for round in 0..SUBSETS {
            let mut partial = durable.clone();
            for ops in pending.values() {
                for o in ops {
                    if rng.next_u64() % 2 == 0 {
                        MemEnv::apply(&mut partial, o);
                    }
                }
            }
            verify_image(
                partial,
                &allowed,
                &format!("cut {cut}: synced plus random subset {round} of unsynced writes"),
            );
        }
        images += 2 + SUBSETS;
    }
    eprintln!("block size {bs}: verified {images} crash images");
}

fn crash_every_cut_point_opens_at_a_committed_state_bs4k() {
    crash_states(4096);
}

fn crash_every_cut_point_opens_at_a_committed_state_bs16k() {
    crash_states(16384);
}

fn crash_every_cut_point_opens_at_a_committed_state_bs64k() {
    crash_states(65536);
}

/// ENOSPC at the n-th write of the workload, for many n: the failing operation reports
/// `Error::NoSpace` (no panic, no other error), the store is then in the state before that
/// operation, after it, or (a failed commit rolls back) at the last commit; once space is back it
/// checks clean, commits, and reopens to the same state.
fn crash_enospc_injection_leaves_a_working_store() {
    let total_writes = {
        let (_, log, _) = record(4096);
        log.iter()
            .filter(|op| !matches!(op, MemOp::Sync { .. }))
            .count() as u64
    };
    let step = (total_writes / 150).max(1);
    let mut hit = 0;
    for n in (0..total_writes).step_by(step as usize) {
        if enospc_at(n) {
            hit += 1;
        }
    }
    let poisoned = POISONED.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("ENOSPC hit in {hit} runs; {poisoned} of them needed a reopen to recover");
    assert!(hit > 20, "ENOSPC was hit in {hit} runs only");
}

static POISONED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The store's answer once a failed commit has left the B-tree unusable until reopened.
fn is_poisoned(e: &Error) -> bool {
    matches!(e, Error::Io(_)) && e.to_string().contains("reopen")
}

/// Returns whether the fault was hit.
fn enospc_at(n: u64) -> bool {
    let mut reference = Harness::new(4096);
    let mut h = Harness::new(4096);
    h.tolerate_nospace = true;
    h.env.fail_writes_after(Some(n));
    let mut committed = h.model.snapshot();
    for act in workload() {
        let before = h.model.snapshot();
        let result = h.apply(&act);
        reference.apply(&act).expect("reference run");
        match result {
            Ok(()) => {
                if matches!(act, Act::Commit | Act::Reopen) {
                    committed = h.model.snapshot();
                }
                continue;
            }
            Err(Error::NoSpace) => {}
            Err(e) => panic!("ENOSPC after {n} writes, {act:?}: got {e:?}, not NoSpace"),
        }
        let what = format!("ENOSPC after {n} writes, during {act:?}");
        h.env.fail_writes_after(None);
        let after = reference.model.snapshot();
        let candidates = [&before, &after, &committed];
        let in_candidates = |snap: &Snapshot| candidates.contains(&snap);
        let explain = |snap: &Snapshot| {
            format!(
                "{what}: state is none of before/after/last commit:\n before: {}\n after: {}\n committed: {}",
                snapshot_diff(snap, &before),
                snapshot_diff(snap, &after),
                snapshot_diff(snap, &committed)
            )
        };
        let mut live = None;
        if let Some(store) = h.store.take() {
            // Space is back: the same process goes on, unless the failure poisoned the B-tree
            // (then every call says so and the store must be reopened).
            match snapshot_store(&store) {
                Ok(snap) => {
                    assert!(in_candidates(&snap), "{}", explain(&snap));
                    match store.commit() {
                        Ok(()) => {
                            let report = store.check().expect("check runs");
                            assert!(report.is_clean(), "{what}: {:#?}", report.problems);
                            live = Some(snap);
                            store
                                .close()
                                .unwrap_or_else(|e| panic!("{what}: close: {e}"));
                        }
                        Err(e) => {
                            assert!(is_poisoned(&e), "{what}: commit after the fault: {e:?}");
                            drop(store);
                        }
                    }
                }
                Err(e) => {
                    assert!(is_poisoned(&e), "{what}: reading after the fault: {e:?}");
                    drop(store);
                }
            }
        }
        let store = Store::open_env(Arc::new(h.env.clone()), &open_opts())
            .unwrap_or_else(|e| panic!("{what}: reopen after ENOSPC: {e}"));
        let report = store.check().expect("check runs");
        assert!(
            report.is_clean(),
            "{what}: after reopen: {:#?}",
            report.problems
        );
        let again = snapshot_store(&store).expect("walk");
        assert!(in_candidates(&again), "{}", explain(&again));
        if let Some(snap) = &live {
            assert_eq!(
                snapshot_diff(&again, snap),
                "",
                "{what}: reopen changed the state"
            );
        }
        let f = store
            .create(
                InodeNo::ROOT,
                b"after-enospc",
                &NewInode::regular(0o644),
                ME,
            )
            .expect("create after ENOSPC");
        store
            .write(f.ino, 0, &pattern(5, 20_000))
            .expect("write after ENOSPC");
        store.commit().expect("commit after ENOSPC");
        let report = store.check().expect("check runs");
        assert!(
            report.is_clean(),
            "{what}: after new writes: {:#?}",
            report.problems
        );
        if live.is_none() {
            POISONED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        return true;
    }
    false
}

per_engine!(
    crash_every_cut_point_opens_at_a_committed_state_bs4k,
    crash_every_cut_point_opens_at_a_committed_state_bs16k,
    crash_every_cut_point_opens_at_a_committed_state_bs64k,
    crash_enospc_injection_leaves_a_working_store,
);
