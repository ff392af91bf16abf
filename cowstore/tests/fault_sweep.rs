//! The fault-injection sweep of issue 10: for every I/O call a workload makes (reads, writes,
//! punches, syncs of the pool and of the B-tree file), fail exactly that call (EIO, then
//! ENOSPC) and check that
//! - the operation that met it returned an error and left no trace (the live store equals the
//!   model, in which a failed operation changed nothing),
//! - every other acknowledged change is still there and commits afterwards,
//! - `check()` is clean,
//! - a crash image taken right after the fault opens clean at a committed state with every
//!   byte of the last successful commit.

#[macro_use]
mod engines;
mod common;

use common::*;
use cowstore::io::{Fault, MemEnv};
use cowstore::*;
use std::sync::Arc;

const BS: u64 = 4096;

fn p(s: &str) -> Target {
    Target::Path(s.to_string())
}

/// Committed before the fault is armed.
fn setup() -> Vec<Act> {
    vec![
        Act::Mkdir("d".into()),
        Act::Create("d/a".into()),
        Act::Write(p("d/a"), 0, pattern(1, 3 * BS as usize)),
        Act::Create("b".into()),
        Act::Write(p("b"), 0, pattern(2, 5 * BS as usize + 100)),
        Act::Create("x".into()),
        Act::Write(p("x"), 0, pattern(3, 2 * BS as usize)),
    ]
}

/// Run with the fault armed. `Commit` entries are commit points, driven by the sweep itself.
fn workload() -> Vec<Act> {
    vec![
        // An overwrite of committed blocks running into new ones: several runs, several steps.
        Act::Write(p("d/a"), 2 * BS - 10, pattern(4, 4 * BS as usize)),
        Act::Create("c".into()),
        Act::Clone(p("b"), 0, p("c"), 0, 5 * BS + 100),
        Act::Write(p("c"), BS + 7, pattern(5, 100)),
        Act::Rename("d/a".into(), "d/a2".into(), RenameFlags::default()),
        Act::Link("x".into(), "d/x2".into()),
        Act::Unlink("x".into()),
        Act::Commit,
        Act::Truncate(p("c"), 3 * BS + 5),
        Act::Punch(p("b"), BS / 2, 2 * BS),
        Act::Allocate(p("b"), 6 * BS, 3 * BS, false),
        Act::ZeroRange(p("d/a2"), 100, BS, true),
        Act::Mkdir("e".into()),
        Act::Symlink("e/l".into(), b"../b".to_vec()),
        Act::Write(p("b"), 0, pattern(6, BS as usize)),
        Act::Commit,
        Act::Unlink("e/l".into()),
        Act::Rmdir("e".into()),
        Act::Write(p("c"), 10 * BS, pattern(7, 3 * BS as usize)),
    ]
}

struct Outcome {
    fired: bool,
}

/// One run of the workload with the `n`-th I/O call failing with `errno` (none if `n` is past
/// the end); returns whether the fault fired, after checking everything the sweep promises.
fn run(n: Option<u64>, errno: i32) -> Outcome {
    eprintln!("sweep: errno {errno}, failing I/O call {n:?}");
    let mut h = Harness::new(BS as u32);
    h.tolerate_nospace = true;
    for a in setup() {
        h.apply(&a).expect("setup");
    }
    h.store().commit().expect("setup commit");
    let mut durable = h.model.snapshot();
    // A commit that failed may still have reached the disk before its error.
    let mut maybe_durable = Vec::new();
    if let Some(after) = n {
        h.env.inject_fault(Some(Fault {
            after,
            errno,
            file: None,
            syncs_only: false,
        }));
    }
    let mut image = None;
    for act in workload() {
        let fired_before = h.env.fault_fired();
        if matches!(act, Act::Commit) {
            match h.store().commit() {
                Ok(()) => {
                    durable = h.model.snapshot();
                    maybe_durable.clear();
                }
                Err(e) => {
                    eprintln!("  commit failed: {e}");
                    assert!(
                        matches!(e, Error::Io(_) | Error::NoSpace),
                        "commit failed with {e}"
                    );
                    maybe_durable.push(h.model.snapshot());
                }
            }
        } else if let Err(e) = h.apply(&act) {
            eprintln!("  {act:?} failed: {e}");
            assert!(h.env.fault_fired(), "{act:?} failed without a fault: {e}");
        }
        if !fired_before && h.env.fault_fired() {
            // The image a power cut right after the fault would leave.
            image = Some((h.env.files(), durable.clone(), maybe_durable.clone()));
            // Everything acknowledged so far is still there, the failed operation is not.
            h.verify();
        }
    }
    let fired = h.env.fault_fired();
    h.env.inject_fault(None);
    h.verify();
    h.store()
        .commit()
        .expect("a commit after the fault succeeds");
    let report = h.store().check().expect("check");
    assert!(report.is_clean(), "after the fault: {:#?}", report.problems);
    let committed = snapshot_store(h.store()).expect("walk");
    let want = h.model.snapshot();
    assert!(
        committed == want,
        "after the fault and a commit: {}",
        snapshot_diff(&committed, &want)
    );
    if let Some((files, durable, maybe)) = image {
        let env = MemEnv::from_files(files);
        let s = Store::open_env(Arc::new(env), &open_opts()).expect("the crash image opens");
        let report = s.check().expect("check the crash image");
        assert!(report.is_clean(), "crash image: {:#?}", report.problems);
        let got = snapshot_store(&s).expect("walk the crash image");
        assert!(
            got == durable || maybe.contains(&got),
            "the crash image is not at a committed state: {}",
            snapshot_diff(&got, &durable)
        );
    }
    Outcome { fired }
}

fn sweep(errno: i32) {
    // How many I/O calls the workload makes when nothing fails.
    let env_calls = {
        let mut h = Harness::new(BS as u32);
        for a in setup() {
            h.apply(&a).expect("setup");
        }
        h.store().commit().expect("commit");
        let before = h.env.io_calls();
        for act in workload() {
            if matches!(act, Act::Commit) {
                h.store().commit().expect("commit");
            } else {
                h.apply(&act).expect("workload");
            }
        }
        h.env.io_calls() - before
    };
    assert!(env_calls > 20, "the workload makes {env_calls} I/O calls");
    let mut fired = 0;
    let only: Option<u64> = std::env::var("SWEEP_N").ok().and_then(|v| v.parse().ok());
    for n in 0..env_calls {
        if only.is_some_and(|o| o != n) {
            continue;
        }
        if run(Some(n), errno).fired {
            fired += 1;
        }
    }
    assert!(
        fired * 10 >= env_calls * 9,
        "only {fired} of {env_calls} faults fired"
    );
    assert!(!run(None, errno).fired);
}

fn every_eio_aborts_only_the_operation_that_met_it() {
    sweep(libc::EIO);
}

fn every_enospc_aborts_only_the_operation_that_met_it() {
    sweep(libc::ENOSPC);
}

per_engine!(
    every_eio_aborts_only_the_operation_that_met_it,
    every_enospc_aborts_only_the_operation_that_met_it,
);
