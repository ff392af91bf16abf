//! Error isolation (issue 10, defects 1, 2, 5, 11): an operation that fails leaves no trace and
//! touches nobody else's changes; a failed commit loses nothing and is never reported durable;
//! pinned reads never see another file's bytes.

#[macro_use]
mod engines;

use cowstore::io::{Fault, MemEnv};
use cowstore::*;
use std::sync::Arc;

const ME: Caller = Caller { uid: 0, gid: 0 };
const BS: usize = 4096;

fn opts() -> OpenOptions {
    OpenOptions {
        commit_interval: None,
        cache_bytes: 1 << 20,
        ..Default::default()
    }
}

fn store() -> (MemEnv, Store) {
    let env = MemEnv::new();
    Store::mkfs_env(Arc::new(env.clone()), &engines::mkfs_opts(4096)).expect("mkfs");
    let s = Store::open_env(Arc::new(env.clone()), &opts()).expect("open");
    (env, s)
}

fn reopen(env: &MemEnv, s: Store) -> Store {
    s.close().expect("close");
    Store::open_env(Arc::new(env.clone()), &opts()).expect("reopen")
}

fn fault(after: u64, errno: i32) -> Option<Fault> {
    Some(Fault {
        after,
        errno,
        file: None,
        syncs_only: false,
    })
}

/// Run `f` on a thread of its own; returns its handle and whether it finished within `timeout`.
fn spawn_timed<T: Send + 'static>(
    timeout: std::time::Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> (std::thread::JoinHandle<T>, bool) {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        let r = f();
        let _ = done_tx.send(());
        r
    });
    (h, done_rx.recv_timeout(timeout).is_ok())
}

fn one_failing_operation_keeps_everyone_elses_acknowledged_changes() -> Result<()> {
    // Regression (issue 10, defect 1): any I/O error or corruption inside an operation rolled
    // back the whole shared transaction: files and directories created (and acknowledged) by
    // others before it vanished at once and after remount, and next_ino went back.
    let (env, s) = store();
    let victim = s.create_open(InodeNo::ROOT, b"victim", 0o644, ME)?;
    s.write(victim.ino, 0, &vec![1u8; 4 * BS])?;
    s.commit()?;
    let newfile = s.create_open(InodeNo::ROOT, b"newfile", 0o644, ME)?;
    s.write(newfile.ino, 0, b"x\n")?;
    let newdir = s.mkdir(InodeNo::ROOT, b"newdir", 0o755, ME)?;
    env.inject_fault(fault(1, libc::EIO));
    let r = s.write(victim.ino, BS as u64 / 2, &vec![2u8; 3 * BS]);
    assert!(env.fault_fired(), "the fault must hit the write");
    assert!(matches!(r, Err(Error::Io(_))), "{r:?}");
    assert_eq!(
        s.read_to_vec(victim.ino, 0, 4 * BS as u64)?,
        vec![1u8; 4 * BS]
    );
    assert_eq!(s.lookup(InodeNo::ROOT, b"newfile")?.ino, newfile.ino);
    assert_eq!(s.read_to_vec(newfile.ino, 0, 10)?, b"x\n");
    assert_eq!(s.lookup(InodeNo::ROOT, b"newdir")?.ino, newdir.ino);
    let later = s.create_open(InodeNo::ROOT, b"later", 0o644, ME)?;
    assert!(
        later.ino.0 > newdir.ino.0,
        "inode numbers went back: {} after {}",
        later.ino.0,
        newdir.ino.0
    );
    s.commit()?;
    let s = reopen(&env, s);
    assert_eq!(
        s.read_to_vec(s.lookup(InodeNo::ROOT, b"newfile")?.ino, 0, 10)?,
        b"x\n"
    );
    s.lookup(InodeNo::ROOT, b"newdir")?;
    s.lookup(InodeNo::ROOT, b"later")?;
    assert!(s.check()?.is_clean());
    Ok(())
}

fn a_failed_commit_loses_nothing_and_counts_for_fsync() -> Result<()> {
    // Regression (issue 10, defect 1): a failed periodic commit discarded the open transaction
    // and a later fsync returned 0 after the data was gone.
    let (env, s) = store();
    let f = s.create_open(InodeNo::ROOT, b"f", 0o644, ME)?;
    s.write(f.ino, 0, &vec![7u8; 3 * BS])?;
    let seq = s.error_seq();
    // A commit syncs the pool (unless nothing was written to it since its last good sync),
    // then writes and syncs the metadata. The first commit fails at the pool's sync; the second
    // syncs the pool and fails at the metadata's first write; the third, with the pool synced
    // already, fails at the metadata's second call.
    for after in [0, 1, 1] {
        env.inject_fault(fault(after, libc::EIO));
        assert!(s.commit().is_err(), "the commit met the fault");
        assert!(env.fault_fired());
    }
    assert_eq!(s.error_seq(), seq + 3, "each failed commit is counted");
    assert_eq!(s.read_to_vec(f.ino, 0, 3 * BS as u64)?, vec![7u8; 3 * BS]);
    s.commit()?;
    let s = reopen(&env, s);
    let f = s.lookup(InodeNo::ROOT, b"f")?;
    assert_eq!(s.read_to_vec(f.ino, 0, 3 * BS as u64)?, vec![7u8; 3 * BS]);
    assert!(s.check()?.is_clean());
    Ok(())
}

fn a_failed_sync_is_not_retried() -> Result<()> {
    // Regression (issue 10, defect 5): the B-tree backend retried a failed fdatasync (after
    // releasing the space reserve); after a writeback error Linux may drop the dirty pages and
    // report success to the retry, so the commit would claim durability it does not have.
    let (env, s) = store();
    let f = s.create_open(InodeNo::ROOT, b"f", 0o644, ME)?;
    for (i, file) in ["pool", engines::engine().meta_file()]
        .into_iter()
        .enumerate()
    {
        // More than a commit carries in its own block images: the pool is synced first.
        s.write(f.ino, 0, &vec![i as u8; 2 << 20])?;
        for errno in [libc::EIO, libc::ENOSPC] {
            env.inject_fault(Some(Fault {
                after: 0,
                errno,
                file: Some(file.into()),
                syncs_only: true,
            }));
            let r = s.commit();
            assert!(env.fault_fired(), "{file}: the commit syncs it");
            assert!(
                r.is_err(),
                "{file}: a commit whose sync failed succeeded: {r:?}"
            );
        }
        env.inject_fault(None);
        s.commit()?;
    }
    let s = reopen(&env, s);
    assert!(s.check()?.is_clean());
    Ok(())
}

fn enospc_in_a_later_run_applies_nothing() -> Result<()> {
    // Regression (issue 10, defect 2): a write spanning several runs mapped the first runs,
    // failed on a later one, and the partial change (with a stale size) was committed.
    let (env, s) = store();
    let f = s.create_open(InodeNo::ROOT, b"f", 0o644, ME)?;
    // Holes between mapped blocks: the write below needs several separate new runs.
    for b in [0usize, 2, 4, 6] {
        s.write(f.ino, (b * BS) as u64, &[9u8; BS])?;
    }
    s.commit()?;
    let before = s.read_to_vec(f.ino, 0, 1 << 20)?;
    let size = s.getattr(f.ino)?.size;
    for n in 0..12 {
        env.fail_writes_after(Some(n));
        let r = s.write(f.ino, 0, &vec![5u8; 12 * BS]);
        env.fail_writes_after(None);
        if r.is_ok() {
            break;
        }
        assert!(matches!(r, Err(Error::NoSpace)), "{r:?}");
        assert_eq!(s.getattr(f.ino)?.size, size, "after failing at write {n}");
        assert_eq!(s.read_to_vec(f.ino, 0, 1 << 20)?, before);
        s.commit()?;
        let report = s.check()?;
        assert!(
            report.is_clean(),
            "after failing at write {n}: {:#?}",
            report.problems
        );
    }
    Ok(())
}

fn a_block_under_a_pinned_read_is_never_rewritten_in_place() -> Result<()> {
    // Regression (issue 10, defect 11): in-place rewrites ignored read pins. A block of the open
    // transaction, shared by a clone whose read was pinned and then truncated away, was
    // rewritten in place, and the pinned read returned the other file's new bytes.
    let (_env, s) = store();
    let a = s.create_open(InodeNo::ROOT, b"a", 0o644, ME)?;
    s.write(a.ino, 0, &vec![b'A'; 2 * BS])?;
    let b = s.create_open(InodeNo::ROOT, b"b", 0o644, ME)?;
    s.clone_range(a.ino, 0, b.ino, 0, 2 * BS as u64)?;
    let pinned = s.read(b.ino, 0, 2 * BS as u64)?;
    s.setattr(
        b.ino,
        &SetAttr {
            size: Some(0),
            ..Default::default()
        },
    )?;
    s.write(a.ino, 0, &vec![b'Z'; 2 * BS])?;
    let pool = s.pool();
    for seg in pinned.iter() {
        if let Segment::Pool { pos, len } = *seg {
            let mut buf = vec![0u8; len as usize];
            pool.read_at(&mut buf, pos)?;
            assert!(
                buf.iter().all(|&c| c == b'A'),
                "the pinned read of b sees a's new bytes"
            );
        }
    }
    drop(pinned);
    assert_eq!(s.read_to_vec(a.ino, 0, 2 * BS as u64)?, vec![b'Z'; 2 * BS]);
    s.commit()?;
    assert!(s.check()?.is_clean());
    Ok(())
}

fn uncommitted_metadata_stays_bounded_without_periodic_commits() -> Result<()> {
    // Regression (issue 10, defect 16): with commit=0 the open transaction grew without bound.
    // Past max_dirty_bytes of uncommitted metadata, the operation that crossed it commits.
    let env = MemEnv::new();
    Store::mkfs_env(Arc::new(env.clone()), &engines::mkfs_opts(4096))?;
    let s = Store::open_env(
        Arc::new(env.clone()),
        &OpenOptions {
            max_dirty_bytes: 1 << 20,
            ..opts()
        },
    )?;
    let before = s.commit_count();
    let value = vec![b'v'; 4000];
    for i in 0..1000u32 {
        let f = s.create_open(InodeNo::ROOT, format!("f{i}").as_bytes(), 0o644, ME)?;
        s.setxattr(f.ino, b"user.big", &value, 0)?;
    }
    let commits = s.commit_count() - before;
    // About 4 MB of records: a few commits, not one per operation.
    assert!(
        (2..=20).contains(&commits),
        "{commits} commits for 4 MB of uncommitted metadata"
    );
    drop(s);
    let s = Store::open_env(Arc::new(env), &opts())?;
    assert_eq!(s.readdir(InodeNo::ROOT, 0, usize::MAX)?.len(), 1002);
    Ok(())
}

fn operations_go_on_while_a_commit_syncs_the_pool() -> Result<()> {
    // Regression (issue 12, commit stalls): a commit held the store lock through the pool's
    // fdatasync, which after seconds of writes flushes hundreds of MB: every operation of every
    // process waited for it (fio random writes: single writes stalled 370-600 ms). The bulk of
    // the pool's flush now runs before the commit takes the lock.
    let (env, s) = store();
    let s = Arc::new(s);
    let f = s.create_open(InodeNo::ROOT, b"f", 0o644, ME)?;
    // More than a commit carries in its own block images: the pool is synced first.
    s.write(f.ino, 0, &vec![1u8; 2 << 20])?;
    env.hold_syncs("pool");
    let committer = {
        let s = s.clone();
        std::thread::spawn(move || s.commit())
    };
    let held = env.wait_held_syncs(1, std::time::Duration::from_secs(10));
    // While the pool's sync is held: other operations run and finish.
    let (worker, ran) = {
        let s = s.clone();
        spawn_timed(std::time::Duration::from_secs(10), move || {
            let g = s.create_open(InodeNo::ROOT, b"g", 0o644, ME)?;
            s.write(g.ino, 0, b"written during the commit")?;
            s.read_to_vec(f.ino, 0, 4)
        })
    };
    env.release_syncs();
    assert!(held, "the commit never synced the pool");
    assert!(ran, "operations waited for the commit's pool sync");
    assert_eq!(worker.join().expect("worker")?, vec![1u8; 4]);
    committer.join().expect("committer")?;
    // Both the committed write and the one made during the commit survive a reopen.
    s.commit()?;
    let s = Arc::into_inner(s).expect("one owner");
    let s = reopen(&env, s);
    let g = s.lookup(InodeNo::ROOT, b"g")?;
    assert_eq!(
        s.read_to_vec(g.ino, 0, 64)?,
        b"written during the commit".to_vec()
    );
    assert_eq!(s.read_to_vec(f.ino, 0, 2 << 20)?, vec![1u8; 2 << 20]);
    assert!(s.check()?.is_clean());
    Ok(())
}

fn operations_go_on_while_a_large_write_reaches_the_pool() -> Result<()> {
    // Issue 12 (concurrency: no mutex held across pool I/O): a write held the store lock
    // through its pool pwrite, so with 4 writers of 1 MiB most of the time went to waiting for
    // it. A large write now allocates its blocks, writes them without the lock, then maps them.
    let (env, s) = store();
    let s = Arc::new(s);
    let f = s.create_open(InodeNo::ROOT, b"f", 0o644, ME)?;
    s.write(f.ino, 0, &vec![1u8; 64 * BS])?;
    s.commit()?;
    env.hold_writes("pool", 16 * BS);
    let writer = {
        let s = s.clone();
        std::thread::spawn(move || s.write(f.ino, 32 * BS as u64, &vec![2u8; 64 * BS]))
    };
    let held = env.wait_held_writes(1, std::time::Duration::from_secs(10));
    let (other, ran) = {
        let s = s.clone();
        spawn_timed(std::time::Duration::from_secs(10), move || {
            let g = s.create_open(InodeNo::ROOT, b"g", 0o644, ME)?;
            s.write(g.ino, 0, b"written meanwhile")?;
            // The write in flight is not visible yet: old bytes, old size.
            Ok::<_, Error>((
                s.read_to_vec(f.ino, 32 * BS as u64, 4)?,
                s.getattr(f.ino)?.size,
            ))
        })
    };
    env.release_writes();
    assert!(held, "the large write never reached the pool");
    assert!(ran, "operations waited for a large write's pool I/O");
    assert_eq!(
        other.join().expect("other")?,
        (vec![1u8; 4], 64 * BS as u64)
    );
    assert_eq!(writer.join().expect("writer")?, 64 * BS);
    let mut want = vec![1u8; 32 * BS];
    want.extend(vec![2u8; 64 * BS]);
    assert_eq!(s.read_to_vec(f.ino, 0, 96 * BS as u64)?, want);
    s.commit()?;
    let s = reopen(&env, Arc::into_inner(s).expect("one owner"));
    assert_eq!(s.read_to_vec(f.ino, 0, 96 * BS as u64)?, want);
    assert!(s.check()?.is_clean());
    Ok(())
}

fn a_commit_waits_for_a_large_write_in_flight() -> Result<()> {
    // A commit between the halves of a split write would make its blocks durable allocated
    // but unmapped (neither free nor referenced: a leak fsck reports). The commit waits.
    let (env, s) = store();
    let s = Arc::new(s);
    let f = s.create_open(InodeNo::ROOT, b"f", 0o644, ME)?;
    env.hold_writes("pool", 16 * BS);
    let writer = {
        let s = s.clone();
        std::thread::spawn(move || s.write(f.ino, 0, &vec![3u8; 32 * BS]))
    };
    assert!(env.wait_held_writes(1, std::time::Duration::from_secs(10)));
    let (committer, early) = {
        let s = s.clone();
        spawn_timed(std::time::Duration::from_millis(300), move || s.commit())
    };
    env.release_writes();
    assert!(
        !early,
        "a commit ran while a write's blocks were allocated and unmapped"
    );
    writer.join().expect("writer")?;
    committer.join().expect("committer")?;
    let s = Arc::into_inner(s).expect("one owner");
    assert!(s.check()?.is_clean());
    let s = reopen(&env, s);
    assert_eq!(s.read_to_vec(f.ino, 0, 32 * BS as u64)?, vec![3u8; 32 * BS]);
    assert!(s.check()?.is_clean());
    Ok(())
}

fn a_large_write_that_fails_at_the_pool_changes_nothing() -> Result<()> {
    // The split write's pool pwrite fails (ENOSPC on a full host, EIO): the file keeps its
    // bytes and size, and the blocks it had allocated are free again.
    let (env, s) = store();
    let f = s.create_open(InodeNo::ROOT, b"f", 0o644, ME)?;
    s.write(f.ino, 0, &vec![1u8; 16 * BS])?;
    s.commit()?;
    // The pool's high-water mark, in blocks (an in-memory store reports it as its used space).
    let pool_blocks = |s: &Store| s.statfs().map(|f| f.total_blocks - f.free_blocks);
    let mut grown = None;
    for errno in [libc::ENOSPC, libc::EIO] {
        env.inject_fault(Some(Fault {
            after: 0,
            errno,
            file: Some("pool".into()),
            syncs_only: false,
        }));
        let r = s.write(f.ino, 0, &vec![2u8; 32 * BS]);
        assert!(env.fault_fired(), "the fault must hit the write's pwrite");
        assert!(r.is_err(), "{r:?}");
        assert_eq!(s.getattr(f.ino)?.size, 16 * BS as u64);
        assert_eq!(s.read_to_vec(f.ino, 0, 16 * BS as u64)?, vec![1u8; 16 * BS]);
        // The second failure reuses the blocks the first gave back.
        let now = pool_blocks(&s)?;
        assert_eq!(
            *grown.get_or_insert(now),
            now,
            "the failed write's blocks were given back"
        );
    }
    s.commit()?;
    assert!(s.check()?.is_clean(), "no block leaked");
    // And the next write takes them.
    s.write(f.ino, 0, &vec![2u8; 32 * BS])?;
    assert_eq!(Some(pool_blocks(&s)?), grown);
    s.commit()?;
    assert_eq!(s.read_to_vec(f.ino, 0, 32 * BS as u64)?, vec![2u8; 32 * BS]);
    assert!(s.check()?.is_clean());
    Ok(())
}

per_engine!(
    one_failing_operation_keeps_everyone_elses_acknowledged_changes,
    a_failed_commit_loses_nothing_and_counts_for_fsync,
    a_failed_sync_is_not_retried,
    enospc_in_a_later_run_applies_nothing,
    a_block_under_a_pinned_read_is_never_rewritten_in_place,
    uncommitted_metadata_stays_bounded_without_periodic_commits,
    operations_go_on_while_a_commit_syncs_the_pool,
    operations_go_on_while_a_large_write_reaches_the_pool,
    a_commit_waits_for_a_large_write_in_flight,
    a_large_write_that_fails_at_the_pool_changes_nothing,
);
