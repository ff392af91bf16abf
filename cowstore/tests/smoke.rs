//! End-to-end use of the public API on a real directory: the operations a mount will call.

#[macro_use]
mod engines;

use cowstore::*;

fn fresh(bs: u32) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    Store::mkfs(dir.path(), &engines::mkfs_opts(bs)).expect("mkfs");
    let store = Store::open(
        dir.path(),
        &OpenOptions {
            commit_interval: None,
            ..Default::default()
        },
    )
    .expect("open");
    (dir, store)
}

const ME: Caller = Caller {
    uid: 1000,
    gid: 1000,
};

fn write_read_clone_survive_reopen() -> Result<()> {
    let (dir, s) = fresh(4096);
    let a = s.create_open(InodeNo::ROOT, b"a", 0o644, ME)?;
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    s.write(a.ino, 0, &data)?;
    assert_eq!(s.read_to_vec(a.ino, 0, 200_000)?, data);
    let b = s.create_open(InodeNo::ROOT, b"b", 0o644, ME)?;
    assert_eq!(
        s.clone_range(a.ino, 0, b.ino, 0, u64::MAX)?,
        data.len() as u64
    );
    assert_eq!(s.read_to_vec(b.ino, 0, 200_000)?, data);
    s.write(b.ino, 5000, b"XYZ")?;
    assert_eq!(s.read_to_vec(a.ino, 5000, 3)?, &data[5000..5003]);
    assert_eq!(s.read_to_vec(b.ino, 5000, 3)?, b"XYZ");
    s.commit()?;
    s.write(a.ino, 4095, b"QQ")?;
    drop(s);
    let s = Store::open(dir.path(), &OpenOptions::default())?;
    let a2 = s.lookup(InodeNo::ROOT, b"a")?;
    let got = s.read_to_vec(a2.ino, 0, 200_000)?;
    assert_eq!(&got[4095..4097], b"QQ");
    assert_eq!(&got[..4095], &data[..4095]);
    let b2 = s.lookup(InodeNo::ROOT, b"b")?;
    let gb = s.read_to_vec(b2.ino, 0, 200_000)?;
    assert_eq!(&gb[4095..4097], &data[4095..4097]);
    Ok(())
}

fn namespace_basics() -> Result<()> {
    let (_dir, s) = fresh(4096);
    let d = s.mkdir(InodeNo::ROOT, b"d", 0o755, ME)?;
    assert_eq!(s.getattr(InodeNo::ROOT)?.nlink, 3);
    let f = s.create(d.ino, b"f", &NewInode::regular(0o600), ME)?;
    assert!(matches!(s.rmdir(InodeNo::ROOT, b"d"), Err(Error::NotEmpty)));
    s.link(f.ino, InodeNo::ROOT, b"hard")?;
    assert_eq!(s.getattr(f.ino)?.nlink, 2);
    s.rename(d.ino, b"f", InodeNo::ROOT, b"hard", RenameFlags::default())?;
    assert_eq!(
        s.getattr(f.ino)?.nlink,
        2,
        "rename onto a link of itself changes nothing"
    );
    s.symlink(InodeNo::ROOT, b"ln", b"/target", ME)?;
    let names: Vec<_> = s
        .readdir(InodeNo::ROOT, 0, 100)?
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(
        names,
        vec![
            b".".to_vec(),
            b"..".to_vec(),
            b"d".to_vec(),
            b"hard".to_vec(),
            b"ln".to_vec()
        ]
    );
    s.unlink(d.ino, b"f")?;
    s.rmdir(InodeNo::ROOT, b"d")?;
    assert_eq!(s.getattr(InodeNo::ROOT)?.nlink, 2);
    Ok(())
}

fn check_is_clean_after_reflinks_and_deletes_and_stats_add_up() -> Result<()> {
    let (_dir, s) = fresh(4096);
    let a = s.create_open(InodeNo::ROOT, b"a", 0o644, ME)?;
    s.write(a.ino, 0, &vec![7u8; 10 * 4096 + 100])?;
    let b = s.create_open(InodeNo::ROOT, b"b", 0o644, ME)?;
    s.clone_range(a.ino, 0, b.ino, 0, u64::MAX)?;
    s.commit()?;
    let st = s.stats()?;
    assert_eq!(st.shared_bytes, 11 * 4096, "{st:?}");
    assert_eq!(st.exclusive_bytes, 0, "{st:?}");
    assert_eq!(st.logical_bytes, 22 * 4096, "{st:?}");
    s.write(b.ino, 4096, b"x")?;
    s.unlink(InodeNo::ROOT, b"a")?;
    s.commit()?;
    let report = s.check()?;
    assert!(report.is_clean(), "{:#?}", report.problems);
    // a is unlinked but still open: it is an orphan, legitimately.
    s.release(a.ino)?;
    s.release(b.ino)?;
    s.commit()?;
    let report = s.check()?;
    assert!(report.is_clean(), "{:#?}", report.problems);
    let st = s.stats()?;
    assert_eq!(st.shared_bytes, 0, "{st:?}");
    assert_eq!(st.referenced_bytes, 11 * 4096, "{st:?}");
    Ok(())
}

/// Regression (cross-file read): a read's pool positions were used after the store lock was
/// released; a truncate freeing a block allocated in the open transaction let another file's
/// write reuse it, so the read could return that file's bytes. Pinned reads defer the reuse.
fn pinned_read_keeps_its_blocks_from_reuse_within_a_transaction() -> Result<()> {
    let (_dir, s) = fresh(4096);
    let a = s.create_open(InodeNo::ROOT, b"a", 0o644, ME)?;
    s.write(a.ino, 0, &vec![b'A'; 8192])?;
    let pinned = s.read(a.ino, 0, 8192)?;
    s.setattr(
        a.ino,
        &SetAttr {
            size: Some(0),
            ..Default::default()
        },
    )?;
    let b = s.create_open(InodeNo::ROOT, b"b", 0o644, ME)?;
    s.write(b.ino, 0, &vec![b'B'; 8192])?;
    let pool = s.pool();
    for seg in pinned.iter() {
        if let Segment::Pool { pos, len } = *seg {
            let mut buf = vec![0u8; len as usize];
            pool.read_at(&mut buf, pos)?;
            assert!(
                buf.iter().all(|&c| c == b'A'),
                "a pinned read saw reused blocks"
            );
        }
    }
    drop(pinned);
    s.commit()?;
    assert!(s.check()?.is_clean());
    Ok(())
}

/// Regression (cross-file read), the committed-block case: a commit must not make blocks a read
/// is still copying from allocatable. It must not wait for the read under the store lock either
/// (issue 10, defect 14: a read stuck on a hung lower file would hang the mount), so the pinned
/// blocks stay out of the free space until a commit after the read has ended.
fn commit_keeps_blocks_of_pinned_reads_out_of_the_free_space() -> Result<()> {
    let (_dir, s) = fresh(4096);
    let s = std::sync::Arc::new(s);
    let a = s.create_open(InodeNo::ROOT, b"a", 0o644, ME)?;
    s.write(a.ino, 0, &vec![b'A'; 8192])?;
    s.commit()?;
    let pinned = s.read(a.ino, 0, 8192)?;
    s.write(a.ino, 0, &vec![b'Z'; 8192])?; // the pinned blocks are now pending free
    let committer = {
        let s = s.clone();
        std::thread::spawn(move || s.commit())
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !committer.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "commit waits for a pinned read"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    committer.join().expect("join")?;
    assert!(
        s.check()?.is_clean(),
        "the committed state accounts for the held blocks (a crash now must open clean)"
    );
    assert_pinned_bytes_intact(&s, &pinned, b'A')?;
    drop(pinned);
    s.commit()?;
    s.commit()?;
    assert_eq!(s.read_to_vec(a.ino, 0, 8192)?, vec![b'Z'; 8192]);
    assert!(s.check()?.is_clean());
    Ok(())
}

/// Fill new files (which take every free block they can) and check that the pinned read's pool
/// bytes are still `want`.
fn assert_pinned_bytes_intact(s: &Store, pinned: &cowstore::PinnedRead, want: u8) -> Result<()> {
    for i in 0..4u8 {
        let name = [b'f', b'0' + i];
        let f = s.create_open(InodeNo::ROOT, &name, 0o644, ME)?;
        s.write(f.ino, 0, &vec![b'B'; 8192])?;
        s.commit()?;
    }
    let pool = s.pool();
    for seg in pinned.iter() {
        if let Segment::Pool { pos, len } = *seg {
            let mut buf = vec![0u8; len as usize];
            pool.read_at(&mut buf, pos)?;
            assert!(
                buf.iter().all(|&c| c == want),
                "a pinned read saw its blocks reused"
            );
        }
    }
    Ok(())
}

/// Regression (df): statfs added the pool's free runs, which are punched out and already free on
/// the host, to the host's free space, and sized the filesystem from it. The store grows inside
/// its host filesystem: size and free space are the host's.
fn statfs_reports_the_host_filesystem() -> Result<()> {
    let (dir, s) = fresh(4096);
    let f = s.create_open(InodeNo::ROOT, b"f", 0o644, ME)?;
    s.write(f.ino, 0, &vec![1u8; 1 << 20])?;
    s.commit()?;
    s.setattr(
        f.ino,
        &SetAttr {
            size: Some(0),
            ..Default::default()
        },
    )?;
    s.commit()?;
    // Other processes write to the host meanwhile: compare with the host before and after.
    let before = fs_stat(dir.path());
    let st = s.statfs()?;
    let after = fs_stat(dir.path());
    assert_eq!(st.total_blocks, after.0 / 4096, "size is the host's");
    let (lo, hi) = (before.1.min(after.1) / 4096, before.1.max(after.1) / 4096);
    assert!(
        st.avail_blocks + 4096 >= lo && st.avail_blocks <= hi + 4096,
        "free space is the host's (store {} vs host {lo}..{hi} blocks)",
        st.avail_blocks,
    );
    Ok(())
}

/// (total bytes, available bytes) of the filesystem holding `p`, from `df`'s own source.
fn fs_stat(p: &std::path::Path) -> (u64, u64) {
    let out = std::process::Command::new("stat")
        .args(["-f", "-c", "%S %b %a"])
        .arg(p)
        .output()
        .expect("stat -f");
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<u64> = text
        .split_whitespace()
        .map(|x| x.parse().expect("number"))
        .collect();
    (v[0] * v[1], v[0] * v[2])
}

/// Regression (read pins lost in a rollback): a failed commit rolled the transaction back with a
/// fresh pin registry, so a read pinned before it no longer held back the next commit's frees.
fn reads_stay_pinned_across_a_failed_commit() -> Result<()> {
    let env = io::MemEnv::new();
    Store::mkfs_env(std::sync::Arc::new(env.clone()), &engines::mkfs_opts(4096))?;
    let opts = OpenOptions {
        commit_interval: None,
        ..Default::default()
    };
    let s = Store::open_env(std::sync::Arc::new(env.clone()), &opts)?;
    let a = s.create_open(InodeNo::ROOT, b"a", 0o644, ME)?;
    s.write(a.ino, 0, &vec![b'A'; 8192])?;
    s.commit()?;
    let pinned = s.read(a.ino, 0, 8192)?;
    s.write(a.ino, 0, &vec![b'Z'; 8192])?; // the pinned blocks are pending free
    env.fail_writes_after(Some(0));
    assert!(
        s.commit().is_err(),
        "the injected fault must fail the commit"
    );
    env.fail_writes_after(None);
    assert_pinned_bytes_intact(&s, &pinned, b'A')?;
    drop(pinned);
    s.commit()?;
    assert_eq!(s.read_to_vec(a.ino, 0, 8192)?, vec![b'Z'; 8192]);
    assert!(s.check()?.is_clean());
    Ok(())
}

per_engine!(
    write_read_clone_survive_reopen,
    namespace_basics,
    check_is_clean_after_reflinks_and_deletes_and_stats_add_up,
    pinned_read_keeps_its_blocks_from_reuse_within_a_transaction,
    commit_keeps_blocks_of_pinned_reads_out_of_the_free_space,
    statfs_reports_the_host_filesystem,
    reads_stay_pinned_across_a_failed_commit,
);
