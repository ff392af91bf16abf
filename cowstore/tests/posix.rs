//! POSIX behaviour of the store that a real filesystem has and cowfs lacked (issue 10): directory
//! streams that end, access times, open directories, file handles, chattr flags, whiteouts.

#[macro_use]
mod engines;

use cowstore::io::MemEnv;
use cowstore::*;
use std::collections::HashSet;
use std::sync::Arc;

fn opts() -> OpenOptions {
    OpenOptions {
        commit_interval: None,
        cache_bytes: 1 << 20,
        ..Default::default()
    }
}

fn fresh() -> (MemEnv, Store) {
    let env = MemEnv::new();
    Store::mkfs_env(Arc::new(env.clone()), &engines::mkfs_opts(4096)).expect("mkfs");
    let s = Store::open_env(Arc::new(env.clone()), &opts()).expect("open");
    (env, s)
}

const ME: Caller = Caller {
    uid: 1000,
    gid: 1000,
};
const OTHER: Caller = Caller {
    uid: 1001,
    gid: 1001,
};

fn file(s: &Store, dir: InodeNo, name: &str, who: Caller) -> Result<InodeAttr> {
    s.create(dir, name.as_bytes(), &NewInode::regular(0o644), who)
}

fn at(sec: i64) -> TimeSet {
    TimeSet::At(Timespec { sec, nsec: 0 })
}

/// Set atime, and mtime and ctime both to `mtime`.
fn times(s: &Store, ino: InodeNo, atime: i64, mtime: i64) -> Result<InodeAttr> {
    s.setattr(
        ino,
        &SetAttr {
            atime: Some(at(atime)),
            mtime: Some(at(mtime)),
            ctime: Some(Timespec {
                sec: mtime,
                nsec: 0,
            }),
            ..Default::default()
        },
    )
}

fn a_directory_stream_never_returns_an_entry_twice() -> Result<()> {
    // Regression (issue 10, defect 17): walking a 2,000-entry directory while renaming each
    // entry as it was returned yielded 4,000 entries: every renamed entry got a new cookie past
    // the cursor. A stream ends at the directory's next cookie as of opendir/rewind.
    let (_env, s) = fresh();
    let d = s.mkdir(InodeNo::ROOT, b"d", 0o755, ME)?.ino;
    let elsewhere = s.mkdir(InodeNo::ROOT, b"e", 0o755, ME)?.ino;
    for i in 0..2000 {
        file(&s, d, &format!("f{i:04}"), ME)?;
    }
    for i in 0..10 {
        file(&s, elsewhere, &format!("x{i}"), ME)?;
    }
    let (mut end, _) = s.opendir(d)?;
    let mut seen = Vec::new();
    let mut cookie = 0;
    let mut moved_in = 0;
    loop {
        let page = s.readdir_until(d, cookie, end, 64)?;
        if page.is_empty() {
            break;
        }
        for e in &page {
            cookie = e.cookie;
            if e.name == b"." || e.name == b".." {
                continue;
            }
            seen.push(e.ino);
            let mut new = e.name.clone();
            new.extend_from_slice(b"-renamed");
            s.rename(d, &e.name, d, &new, RenameFlags::default())?;
            // Entries renamed into the directory during the pass are not listed in it either.
            if moved_in < 10 {
                s.rename(
                    elsewhere,
                    format!("x{moved_in}").as_bytes(),
                    d,
                    format!("in{moved_in}").as_bytes(),
                    RenameFlags::default(),
                )?;
                moved_in += 1;
            }
        }
        // A dropped bound would let this loop run for ever: stop it anyway.
        assert!(seen.len() <= 2010, "the pass does not end");
    }
    assert_eq!(seen.len(), 2000, "entries returned by one pass");
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 2000);
    // A rewind starts a new pass, which sees the directory as it is now.
    end = s.dir_end(d)?;
    let all = s.readdir_until(d, 0, end, usize::MAX)?;
    assert_eq!(all.len(), 2 + 2000 + 10);
    assert!(all
        .iter()
        .skip(2)
        .all(|e| e.name.ends_with(b"-renamed") || e.name.starts_with(b"in")));
    s.releasedir(d)?;
    s.commit()?;
    assert!(s.check()?.is_clean());
    Ok(())
}

fn access_times_follow_the_mount_policy_without_committing() -> Result<()> {
    // Regression (issue 10, defect 18): atime was never updated (FUSE leaves it to the
    // daemon). relatime (default), strictatime, noatime and nodiratime; the update rides the
    // next commit instead of making one.
    let (env, s) = fresh();
    let f = file(&s, InodeNo::ROOT, "f", ME)?.ino;
    s.write(f, 0, b"hello")?;
    s.commit()?;
    let commits = s.commit_count();
    let relatime = AtimePolicy::default();
    let now = Timespec::now().sec;

    // relatime: an atime before the last modification is refreshed once.
    times(&s, f, now - 100, now - 50)?;
    s.touch_atime(f, relatime)?;
    let a1 = s.getattr(f)?.atime;
    assert!(a1.sec >= now, "read after write left atime at {a1:?}");
    s.touch_atime(f, relatime)?;
    assert_eq!(s.getattr(f)?.atime, a1, "relatime updates once per change");
    // ... and an atime a day old is refreshed even with nothing changed.
    times(&s, f, now - 2 * 86_400, now - 3 * 86_400)?;
    s.touch_atime(f, relatime)?;
    assert!(s.getattr(f)?.atime.sec >= now);
    // An atime after the last change and younger than a day stays.
    times(&s, f, now - 3600, now - 7200)?;
    s.touch_atime(f, relatime)?;
    assert_eq!(s.getattr(f)?.atime.sec, now - 3600);
    // A change of the inode (ctime) after the access is due too, as the kernel says.
    s.setattr(
        f,
        &SetAttr {
            ctime: Some(Timespec {
                sec: now - 60,
                nsec: 0,
            }),
            ..Default::default()
        },
    )?;
    s.touch_atime(f, relatime)?;
    assert!(s.getattr(f)?.atime.sec >= now);

    // strictatime: every access.
    let strict = AtimePolicy {
        mode: AtimeMode::Strict,
        nodiratime: false,
    };
    times(&s, f, now - 10, now - 20)?;
    s.touch_atime(f, strict)?;
    assert!(s.getattr(f)?.atime.sec >= now);

    // noatime: never; nodiratime: never for directories.
    let never = AtimePolicy {
        mode: AtimeMode::Never,
        nodiratime: false,
    };
    times(&s, f, now - 100, now - 50)?;
    s.touch_atime(f, never)?;
    assert_eq!(s.getattr(f)?.atime.sec, now - 100);
    let d = s.mkdir(InodeNo::ROOT, b"d", 0o755, ME)?.ino;
    times(&s, d, now - 100, now - 50)?;
    let nodir = AtimePolicy {
        mode: AtimeMode::Strict,
        nodiratime: true,
    };
    s.touch_atime(d, nodir)?;
    assert_eq!(s.getattr(d)?.atime.sec, now - 100);
    s.touch_atime(f, nodir)?;
    assert!(s.getattr(f)?.atime.sec >= now);
    // The inode's own noatime flag wins over any mount policy.
    s.set_flags(f, InodeFlags::NOATIME, ME)?;
    times(&s, f, now - 100, now - 50)?;
    s.touch_atime(f, strict)?;
    assert_eq!(s.getattr(f)?.atime.sec, now - 100);
    s.set_flags(f, InodeFlags::NONE, ME)?;

    // None of this committed; the next commit carries it.
    assert_eq!(s.commit_count(), commits, "an atime update committed");
    s.touch_atime(f, strict)?;
    let last = s.getattr(f)?.atime;
    s.commit()?;
    drop(s);
    let s = Store::open_env(Arc::new(env.clone()), &opts())?;
    assert_eq!(s.getattr(f)?.atime, last);
    drop(s);
    // A read-only store records nothing.
    let ro = Store::open_env(
        Arc::new(env),
        &OpenOptions {
            read_only: true,
            ..opts()
        },
    )?;
    ro.touch_atime(f, strict)?;
    assert_eq!(ro.getattr(f)?.atime, last);
    Ok(())
}

fn an_open_directory_outlives_rmdir_and_rename_over() -> Result<()> {
    // Regression (issue 10, defect 21): fstat on an open directory gave ENOENT after rmdir of
    // it or a rename over it; an unlinked open inode of any kind answers getattr (nlink 0)
    // until its last close.
    let (_env, s) = fresh();
    let d = s.mkdir(InodeNo::ROOT, b"d", 0o755, ME)?.ino;
    s.opendir(d)?;
    s.rmdir(InodeNo::ROOT, b"d")?;
    let a = s.getattr(d)?;
    assert_eq!((a.kind, a.nlink), (FileKind::Directory, 0));
    // Still listable (only "." and ".."), but nothing can be created in it.
    assert_eq!(s.readdir_until(d, 0, u64::MAX, 10)?.len(), 2);
    assert!(matches!(file(&s, d, "x", ME), Err(Error::NotFound)));
    s.commit()?;
    assert!(s.check()?.is_clean(), "{:?}", s.check()?.problems);
    s.releasedir(d)?;
    assert!(matches!(s.getattr(d), Err(Error::NotFound)));

    let a = s.mkdir(InodeNo::ROOT, b"a", 0o755, ME)?.ino;
    let b = s.mkdir(InodeNo::ROOT, b"b", 0o755, ME)?.ino;
    s.opendir(b)?;
    s.opendir(b)?;
    s.rename(
        InodeNo::ROOT,
        b"a",
        InodeNo::ROOT,
        b"b",
        RenameFlags::default(),
    )?;
    assert_eq!(s.lookup(InodeNo::ROOT, b"b")?.ino, a);
    assert_eq!(s.getattr(b)?.nlink, 0);
    s.releasedir(b)?;
    assert_eq!(s.getattr(b)?.nlink, 0, "freed before its last close");
    s.releasedir(b)?;
    assert!(matches!(s.getattr(b), Err(Error::NotFound)));
    assert_eq!(s.getattr(InodeNo::ROOT)?.nlink, 3);
    s.commit()?;
    assert!(s.check()?.is_clean());
    Ok(())
}

fn file_handles_resolve_by_node_id_and_generations_never_repeat() -> Result<()> {
    // Regression (issue 10, defect 20): the kernel resolves a file handle it no longer caches
    // by looking up "." of the node id (".." for its parent), and a handle (ino, generation)
    // of a deleted inode must never name another one, not even after a crash that rolled
    // back the inode counter.
    let (env, s) = fresh();
    let d = s.mkdir(InodeNo::ROOT, b"d", 0o755, ME)?;
    let f = file(&s, d.ino, "f", ME)?;
    let by_id = s.lookup(f.ino, b".")?;
    assert_eq!((by_id.ino, by_id.generation), (f.ino, f.generation));
    assert_eq!(s.lookup(d.ino, b".")?.ino, d.ino);
    assert_eq!(s.lookup(d.ino, b"..")?.ino, InodeNo::ROOT);
    s.unlink(d.ino, b"f")?;
    assert!(matches!(s.lookup(f.ino, b"."), Err(Error::NotFound)));
    s.commit()?;
    let at_commit = env.files();

    // Created after the last commit, then the machine dies: the counter rolls back and the
    // next store hands out the same inode number again, under a new generation.
    let lost = file(&s, d.ino, "lost", ME)?;
    let s2 = Store::open_env(Arc::new(MemEnv::from_files(at_commit)), &opts())?;
    let reborn = file(&s2, d.ino, "reborn", ME)?;
    assert_eq!(reborn.ino, lost.ino);
    assert_ne!(reborn.generation, lost.generation);
    // Inode numbers are never reused within a store's life.
    let mut inos = HashSet::new();
    for i in 0..50 {
        let x = file(&s2, d.ino, &format!("n{i}"), ME)?;
        assert!(inos.insert(x.ino));
        s2.unlink(d.ino, format!("n{i}").as_bytes())?;
    }
    assert!(!inos.contains(&reborn.ino));
    Ok(())
}

fn chattr_flags_are_enforced_by_the_store() -> Result<()> {
    // Regression (issue 10, defect 23): no inode flags (chattr/lsattr). Immutable: nothing
    // changes, not even for root, and only root sets or clears it. Append-only: data only at
    // the end, no truncate, unlink, rename or link. nodump, noatime: kept; noatime and
    // nodump are inherited from the directory.
    let (env, s) = fresh();
    let d = s.mkdir(InodeNo::ROOT, b"d", 0o777, ME)?.ino;
    let f = file(&s, d, "f", ME)?.ino;
    s.write(f, 0, b"0123456789")?;
    let g = file(&s, d, "g", ME)?.ino;

    assert!(matches!(
        s.set_flags(f, InodeFlags::NODUMP, OTHER),
        Err(Error::NotPermitted)
    ));
    assert_eq!(
        s.set_flags(f, InodeFlags::NODUMP, ME)?.flags,
        InodeFlags::NODUMP
    );
    assert!(matches!(
        s.set_flags(f, InodeFlags::IMMUTABLE, ME),
        Err(Error::NotPermitted)
    ));
    assert!(matches!(
        s.set_flags(f, InodeFlags(0x4), ME),
        Err(Error::Unsupported)
    ));

    // Immutable.
    let imm = InodeFlags(InodeFlags::IMMUTABLE.0 | InodeFlags::NODUMP.0);
    s.link(f, d, b"f-link")?;
    s.set_flags(f, imm, Caller::ROOT)?;
    let eperm = |r: Result<()>, what: &str| {
        assert!(
            matches!(r, Err(Error::NotPermitted)),
            "{what} on an immutable/append-only inode: {r:?}"
        )
    };
    eperm(s.write(f, 10, b"x").map(drop), "append");
    eperm(s.write(f, 0, b"x").map(drop), "overwrite");
    let sz = SetAttr {
        size: Some(0),
        ..Default::default()
    };
    eperm(s.setattr(f, &sz).map(drop), "truncate");
    let chmod = SetAttr {
        mode: Some(0o600),
        ..Default::default()
    };
    eperm(s.setattr(f, &chmod).map(drop), "chmod");
    let touch = SetAttr {
        atime: Some(TimeSet::Now),
        mtime: Some(TimeSet::Now),
        ..Default::default()
    };
    eperm(s.setattr(f, &touch).map(drop), "touch");
    eperm(s.unlink(d, b"f"), "unlink");
    eperm(
        s.rename(d, b"f", d, b"f2", RenameFlags::default()),
        "rename",
    );
    eperm(
        s.rename(d, b"g", d, b"f", RenameFlags::default()),
        "rename over",
    );
    eperm(s.link(f, d, b"f3").map(drop), "link");
    eperm(s.setxattr(f, b"user.x", b"1", 0), "setxattr");
    eperm(s.open_file(f, true, false).map(drop), "open for writing");
    eperm(s.fallocate(f, 0, 4096, FallocMode::PunchHole), "punch");
    eperm(s.clone_range(g, 0, f, 0, 10).map(drop), "clone into");
    eperm(
        s.set_flags(f, InodeFlags::IMMUTABLE, Caller::ROOT)
            .map(drop),
        "other flags while immutable",
    );
    // A rename between two names of the inode moves nothing (POSIX), so it is allowed.
    s.rename(d, b"f", d, b"f-link", RenameFlags::default())?;
    // Reading, opening for reading and cloning from it are fine.
    assert_eq!(s.read_to_vec(f, 0, 10)?, b"0123456789");
    s.open_file(f, false, false)?;
    s.release(f)?;
    s.clone_range(f, 0, g, 0, 10)?;
    assert!(matches!(
        s.set_flags(f, InodeFlags::NONE, ME),
        Err(Error::NotPermitted)
    ));
    s.commit()?;
    assert!(s.check()?.is_clean());
    // Kept by the record (version 2), across a reopen.
    drop(s);
    let s = Store::open_env(Arc::new(env), &opts())?;
    assert_eq!(s.getattr(f)?.flags, imm);
    s.set_flags(f, InodeFlags::NONE, Caller::ROOT)?;
    s.write(f, 0, b"x")?;

    // Append-only.
    s.set_flags(f, InodeFlags::APPEND, Caller::ROOT)?;
    assert_eq!(s.write(f, 10, b"ab")?, 2);
    eperm(s.write(f, 0, b"y").map(drop), "overwrite");
    eperm(s.setattr(f, &sz).map(drop), "truncate");
    eperm(s.setattr(f, &chmod).map(drop), "chmod");
    eperm(s.unlink(d, b"f"), "unlink");
    eperm(s.link(f, d, b"f3").map(drop), "link");
    eperm(
        s.open_file(f, true, false).map(drop),
        "open without O_APPEND",
    );
    s.open_file(f, true, true)?;
    s.release(f)?;
    s.setattr(f, &touch)?;
    s.fallocate(f, 0, 8192, FallocMode::Allocate { keep_size: true })?;
    assert_eq!(s.read_to_vec(f, 0, 100)?, b"x123456789ab");

    // Directories: immutable refuses new entries, append-only refuses removing them.
    s.set_flags(d, InodeFlags::IMMUTABLE, Caller::ROOT)?;
    eperm(
        file(&s, d, "new", ME).map(drop),
        "create in an immutable directory",
    );
    eperm(s.unlink(d, b"g"), "unlink in an immutable directory");
    s.set_flags(d, InodeFlags::APPEND, Caller::ROOT)?;
    file(&s, d, "new", ME)?;
    eperm(s.unlink(d, b"g"), "unlink in an append-only directory");
    eperm(
        s.rename(d, b"g", InodeNo::ROOT, b"g", RenameFlags::default()),
        "rename out of an append-only directory",
    );
    s.set_flags(d, InodeFlags::NONE, Caller::ROOT)?;
    s.set_flags(f, InodeFlags::NONE, Caller::ROOT)?;
    s.unlink(d, b"f")?;

    // noatime and nodump are inherited by new files and directories.
    let inh = InodeFlags(InodeFlags::NOATIME.0 | InodeFlags::NODUMP.0);
    s.set_flags(d, inh, ME)?;
    assert_eq!(file(&s, d, "child", ME)?.flags, inh);
    assert_eq!(s.mkdir(d, b"sub", 0o755, ME)?.flags, inh);
    s.commit()?;
    assert!(s.check()?.is_clean());
    Ok(())
}

fn rename_whiteout_leaves_a_whiteout_in_the_same_operation() -> Result<()> {
    // Regression (issue 10, defect 23): RENAME_WHITEOUT was refused (EINVAL). overlayfs asks
    // it of its upper layer: the source name must hold a character device 0:0 afterwards.
    let (_env, s) = fresh();
    let d = s.mkdir(InodeNo::ROOT, b"d", 0o755, ME)?.ino;
    let a = file(&s, d, "a", ME)?.ino;
    file(&s, d, "b", ME)?;
    let nr = RenameFlags {
        noreplace: true,
        exchange: false,
    };
    // A refused rename leaves no whiteout behind.
    assert!(matches!(
        s.rename_whiteout(d, b"a", d, b"b", nr, OTHER),
        Err(Error::Exists)
    ));
    assert_eq!(s.lookup(d, b"a")?.ino, a);
    let ex = RenameFlags {
        noreplace: false,
        exchange: true,
    };
    assert!(matches!(
        s.rename_whiteout(d, b"a", d, b"b", ex, OTHER),
        Err(Error::Invalid(_))
    ));
    s.rename_whiteout(d, b"a", InodeNo::ROOT, b"moved", nr, OTHER)?;
    assert_eq!(s.lookup(InodeNo::ROOT, b"moved")?.ino, a);
    let w = s.lookup(d, b"a")?;
    assert_eq!(
        (w.kind, w.rdev, w.perm, w.uid, w.gid, w.nlink),
        (FileKind::CharDevice, 0, 0, OTHER.uid, OTHER.gid, 1)
    );
    assert_ne!(w.ino, a);
    // Over an existing target, and of a directory.
    let sub = s.mkdir(d, b"sub", 0o755, ME)?.ino;
    s.rename_whiteout(d, b"sub", d, b"b", RenameFlags::default(), OTHER)
        .map(drop)
        .or_else(|e| match e {
            // A directory cannot replace a file.
            Error::NotDir => Ok(()),
            e => Err(e),
        })?;
    s.rename_whiteout(
        d,
        b"sub",
        InodeNo::ROOT,
        b"sub2",
        RenameFlags::default(),
        OTHER,
    )?;
    assert_eq!(s.lookup(InodeNo::ROOT, b"sub2")?.ino, sub);
    assert_eq!(s.lookup(d, b"sub")?.kind, FileKind::CharDevice);
    assert_eq!(s.getattr(d)?.nlink, 2);
    s.commit()?;
    assert!(s.check()?.is_clean(), "{:?}", s.check()?.problems);
    Ok(())
}

fn a_store_made_read_only_changes_nothing_until_writable_again() -> Result<()> {
    // Regression (issue 13): `mount -o remount,ro` left the store writable under the mount:
    // reads still recorded access times, and the periodic commit made new generations of a
    // read-only mount. Going read-only commits once, then nothing changes the store (no
    // atime, no write, no commit) until it is writable again, which records access times again
    // and frees what was released meanwhile.
    let (env, s) = fresh();
    let f = file(&s, InodeNo::ROOT, "f", ME)?.ino;
    s.write(f, 0, b"hello")?;
    let now = Timespec::now().sec;
    // Due under every policy but noatime.
    times(&s, f, now - 100, now - 50)?;
    let g = file(&s, InodeNo::ROOT, "g", ME)?.ino;
    s.open_inode(g)?;
    s.unlink(InodeNo::ROOT, b"g")?;
    let commits = s.commit_count();
    s.set_read_only(true)?;
    assert!(s.is_read_only());
    assert_eq!(
        s.commit_count(),
        commits + 1,
        "what came before is committed"
    );
    let generation = s.committed_summary()?.generation;
    let strict = AtimePolicy {
        mode: AtimeMode::Strict,
        nodiratime: false,
    };
    s.touch_atime(f, strict)?;
    s.touch_atime(f, AtimePolicy::default())?;
    s.touch_atime(InodeNo::ROOT, strict)?;
    assert_eq!(s.getattr(f)?.atime.sec, now - 100, "an access was recorded");
    assert!(matches!(s.write(f, 0, b"x"), Err(Error::ReadOnly)));
    assert!(matches!(
        s.mkdir(InodeNo::ROOT, b"d", 0o755, ME),
        Err(Error::ReadOnly)
    ));
    assert!(matches!(
        s.unlink(InodeNo::ROOT, b"f"),
        Err(Error::ReadOnly)
    ));
    // The last close of an unlinked file cannot free it now: it stays an orphan.
    s.release(g)?;
    assert_eq!(s.getattr(g)?.nlink, 0);
    s.commit()?;
    s.set_read_only(true)?;
    assert_eq!(s.commit_count(), commits + 1, "a read-only store committed");
    assert_eq!(s.committed_summary()?.generation, generation);
    assert_eq!(s.read_to_vec(f, 0, 5)?, b"hello");

    s.set_read_only(false)?;
    assert!(!s.is_read_only());
    assert!(
        matches!(s.getattr(g), Err(Error::NotFound)),
        "the orphan is freed"
    );
    s.touch_atime(f, AtimePolicy::default())?;
    let touched = s.getattr(f)?.atime;
    assert!(touched.sec >= now, "relatime records the access again");
    s.commit()?;
    assert!(s.committed_summary()?.generation > generation);
    let r = s.check()?;
    assert!(r.is_clean(), "{r:?}");
    drop(s);

    // A store opened read-only stays so.
    let ro = Store::open_env(
        Arc::new(env),
        &OpenOptions {
            read_only: true,
            ..opts()
        },
    )?;
    assert_eq!(ro.getattr(f)?.atime, touched);
    ro.set_read_only(true)?;
    assert!(matches!(ro.set_read_only(false), Err(Error::ReadOnly)));
    assert!(ro.is_read_only());
    Ok(())
}

per_engine!(
    a_directory_stream_never_returns_an_entry_twice,
    access_times_follow_the_mount_policy_without_committing,
    an_open_directory_outlives_rmdir_and_rename_over,
    file_handles_resolve_by_node_id_and_generations_never_repeat,
    chattr_flags_are_enforced_by_the_store,
    rename_whiteout_leaves_a_whiteout_in_the_same_operation,
    a_store_made_read_only_changes_nothing_until_writable_again,
);
