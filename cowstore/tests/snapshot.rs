//! Snapshots of trees and their removal at the store level (issue 13): the copy is what `cp -a`
//! makes, shares every block, diverges on writes, refuses every change when read-only, is
//! refused whole for a caller who could not copy the tree, and a crash during the build leaves
//! nothing behind after the next open.

#[macro_use]
mod engines;

use cowstore::acl::{Capability, Cred};
use cowstore::*;
use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap};

fn fresh() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    Store::mkfs(dir.path(), &engines::mkfs_opts(4096)).expect("mkfs");
    let store = Store::open(dir.path(), &opts()).expect("open");
    (dir, store)
}

fn opts() -> OpenOptions {
    OpenOptions {
        commit_interval: None,
        ..Default::default()
    }
}

const ME: Caller = Caller {
    uid: 1000,
    gid: 1000,
};

/// An unprivileged caller: its uid/gid, its groups, no capabilities.
struct User(u32, u32);

impl Cred for User {
    fn caller(&self) -> Caller {
        Caller {
            uid: self.0,
            gid: self.1,
        }
    }
    fn in_group(&self, gid: u32) -> bool {
        gid == self.1
    }
    fn capable(&self, _cap: Capability) -> bool {
        false
    }
}

/// What `find -printf` and `getfattr -d` would show of one path, with hard links named by the
/// first path of their group instead of an inode number.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    kind: FileKind,
    perm: u16,
    uid: u32,
    gid: u32,
    size: u64,
    nlink: u32,
    atime: Timespec,
    mtime: Timespec,
    rdev: u32,
    bytes: Vec<u8>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    link_group: String,
    /// SEEK_DATA offsets of each data run (holes must stay holes).
    data_runs: Vec<u64>,
}

fn data_runs(s: &Store, ino: InodeNo, size: u64) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    let mut off = 0;
    while off < size {
        match s.seek(ino, off, SeekWhence::Data) {
            Ok(d) => {
                out.push(d);
                off = s.seek(ino, d, SeekWhence::Hole)?;
            }
            Err(Error::NoData) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

fn describe(s: &Store, top: InodeNo) -> Result<BTreeMap<String, Seen>> {
    let mut out = BTreeMap::new();
    let mut groups: HashMap<InodeNo, String> = HashMap::new();
    let mut todo = vec![(String::from("."), top)];
    while let Some((path, ino)) = todo.pop() {
        let a = s.getattr(ino)?;
        let bytes = match a.kind {
            FileKind::Regular => s.read_to_vec(ino, 0, a.size)?,
            FileKind::Symlink => s.readlink(ino)?,
            _ => Vec::new(),
        };
        if a.kind == FileKind::Directory {
            for e in s.readdir(ino, 2, usize::MAX)? {
                let name = String::from_utf8_lossy(&e.name).into_owned();
                todo.push((format!("{path}/{name}"), e.ino));
            }
        }
        let mut xattrs = BTreeMap::new();
        for n in s.listxattr(ino)? {
            let v = s.getxattr(ino, &n)?;
            xattrs.insert(n, v);
        }
        let link_group = groups.entry(ino).or_insert_with(|| path.clone()).clone();
        let data_runs = if a.kind == FileKind::Regular {
            data_runs(s, ino, a.size)?
        } else {
            Vec::new()
        };
        out.insert(
            path,
            Seen {
                kind: a.kind,
                perm: a.perm,
                uid: a.uid,
                gid: a.gid,
                size: a.size,
                nlink: a.nlink,
                atime: a.atime,
                mtime: a.mtime,
                rdev: a.rdev,
                bytes,
                xattrs,
                link_group,
                data_runs,
            },
        );
    }
    // Walk order decides which path of a group is met first: name groups by their smallest path.
    let mut first: HashMap<String, String> = HashMap::new();
    for (p, e) in &out {
        first
            .entry(e.link_group.clone())
            .or_insert_with(|| p.clone());
    }
    for e in out.values_mut() {
        e.link_group = first[&e.link_group].clone();
    }
    Ok(out)
}

fn assert_same_tree(s: &Store, a: InodeNo, b: InodeNo) -> Result<()> {
    let (da, db) = (describe(s, a)?, describe(s, b)?);
    assert_eq!(
        da.keys().collect::<Vec<_>>(),
        db.keys().collect::<Vec<_>>(),
        "paths differ"
    );
    for (p, x) in &da {
        assert_eq!(Some(x), db.get(p), "{p} differs");
    }
    Ok(())
}

fn assert_clean(s: &Store) -> Result<()> {
    let r = s.check()?;
    assert!(r.is_clean(), "{r:?}");
    Ok(())
}

const ACL_WITH_USER: [u8; 44] = [
    2, 0, 0, 0, // version
    1, 0, 7, 0, 0xff, 0xff, 0xff, 0xff, // user::rwx
    2, 0, 5, 0, 0xe9, 3, 0, 0, // user:1001:r-x
    4, 0, 5, 0, 0xff, 0xff, 0xff, 0xff, // group::r-x
    0x10, 0, 5, 0, 0xff, 0xff, 0xff, 0xff, // mask::r-x
    0x20, 0, 5, 0, 0xff, 0xff, 0xff, 0xff, // other::r-x
];

/// A tree with every kind of inode, a hard-link group, xattrs, an ACL and a sparse file.
fn populate(s: &Store) -> Result<InodeNo> {
    let src = s.mkdir(InodeNo::ROOT, b"src", 0o755, ME)?.ino;
    let sub = s.mkdir(src, b"sub", 0o750, ME)?.ino;
    let deep = s.mkdir(sub, b"deep", 0o700, ME)?.ino;
    let f = s.create(src, b"file", &NewInode::regular(0o644), ME)?.ino;
    s.write(f, 0, &vec![7u8; 100_000])?;
    let sparse = s.create(sub, b"sparse", &NewInode::regular(0o600), ME)?.ino;
    s.write(sparse, 0, b"head")?;
    s.write(sparse, 10 << 20, b"tail")?;
    s.link(f, deep, b"hardlink")?;
    s.symlink(src, b"link", b"../file", ME)?;
    s.create(sub, b"fifo", &NewInode::new(FileKind::Fifo, 0o644, 0), ME)?;
    s.create(
        sub,
        b"tty",
        &NewInode::new(FileKind::CharDevice, 0o620, (4 << 8) | 1),
        Caller::ROOT,
    )?;
    s.setxattr(f, b"user.color", b"blue", 0)?;
    s.setxattr(f, b"trusted.t", b"x", 0)?;
    s.setxattr(sub, b"system.posix_acl_access", &ACL_WITH_USER, 0)?;
    s.setattr(
        f,
        &SetAttr {
            atime: Some(TimeSet::At(Timespec {
                sec: 1_000_000,
                nsec: 123_456_789,
            })),
            mtime: Some(TimeSet::At(Timespec {
                sec: 2_000_000,
                nsec: 987_654_321,
            })),
            ..SetAttr::default()
        },
    )?;
    for i in 0..50u32 {
        let g = s.create(
            deep,
            format!("f{i}").as_bytes(),
            &NewInode::regular(0o644),
            ME,
        )?;
        s.write(g.ino, 0, &i.to_le_bytes())?;
    }
    Ok(src)
}

fn snapshot_is_cp_a_and_shares_every_block() -> Result<()> {
    let (_d, s) = fresh();
    let src = populate(&s)?;
    s.commit()?;
    let before = s.stats()?;
    let dst = s.snapshot(
        src,
        InodeNo::ROOT,
        b"dst",
        &SnapshotOptions::default(),
        &Caller::ROOT,
    )?;
    assert_eq!(s.lookup(InodeNo::ROOT, b"dst")?.ino, dst.ino);
    assert_same_tree(&s, src, dst.ino)?;
    let hl = s.lookup(
        s.lookup(s.lookup(dst.ino, b"sub")?.ino, b"deep")?.ino,
        b"hardlink",
    )?;
    assert_eq!(
        hl.ino,
        s.lookup(dst.ino, b"file")?.ino,
        "hard links stay one inode"
    );
    assert_eq!(hl.nlink, 2);
    assert_eq!(s.getattr(InodeNo::ROOT)?.nlink, 4, "root: . .. src dst");
    s.commit()?;
    let after = s.stats()?;
    assert_eq!(
        after.referenced_bytes, before.referenced_bytes,
        "no data block copied"
    );
    assert_eq!(after.inodes, before.inodes + 58);
    assert_clean(&s)
}

fn snapshots_diverge_on_writes_to_either_side() -> Result<()> {
    let (_d, s) = fresh();
    let src = populate(&s)?;
    let dst = s
        .snapshot(
            src,
            InodeNo::ROOT,
            b"dst",
            &SnapshotOptions::default(),
            &Caller::ROOT,
        )?
        .ino;
    let (sf, df) = (s.lookup(src, b"file")?.ino, s.lookup(dst, b"file")?.ino);
    s.write(sf, 10, b"SRC")?;
    s.write(df, 20, b"DST")?;
    assert_eq!(&s.read_to_vec(sf, 10, 3)?, b"SRC");
    assert_eq!(&s.read_to_vec(df, 10, 3)?, &[7u8; 3]);
    assert_eq!(&s.read_to_vec(df, 20, 3)?, b"DST");
    assert_eq!(&s.read_to_vec(sf, 20, 3)?, &[7u8; 3]);
    s.create(dst, b"new", &NewInode::regular(0o644), ME)?;
    assert!(matches!(s.lookup(src, b"new"), Err(Error::NotFound)));
    s.unlink(src, b"link")?;
    assert!(s.lookup(dst, b"link").is_ok());
    s.commit()?;
    assert_clean(&s)
}

fn read_only_snapshot_refuses_every_change_but_whole_removal() -> Result<()> {
    let (_d, s) = fresh();
    let src = populate(&s)?;
    let ro = SnapshotOptions { readonly: true };
    let dst = s
        .snapshot(src, InodeNo::ROOT, b"ro", &ro, &Caller::ROOT)?
        .ino;
    let f = s.lookup(dst, b"file")?.ino;
    let sub = s.lookup(dst, b"sub")?.ino;
    let erofs = |r: Result<()>| assert!(matches!(r, Err(Error::ReadOnly)), "{r:?}");
    erofs(s.write(f, 0, b"x").map(drop));
    erofs(
        s.setattr(
            f,
            &SetAttr {
                mode: Some(0o600),
                ..SetAttr::default()
            },
        )
        .map(drop),
    );
    erofs(
        s.setattr(
            f,
            &SetAttr {
                size: Some(0),
                ..SetAttr::default()
            },
        )
        .map(drop),
    );
    erofs(s.setxattr(f, b"user.a", b"b", 0));
    erofs(s.removexattr(f, b"user.color"));
    erofs(s.create(dst, b"n", &NewInode::regular(0o644), ME).map(drop));
    erofs(s.mkdir(sub, b"n", 0o755, ME).map(drop));
    erofs(s.unlink(dst, b"file"));
    erofs(s.rmdir(sub, b"deep"));
    erofs(s.rename(dst, b"file", dst, b"file2", RenameFlags::default()));
    erofs(s.rename(dst, b"file", InodeNo::ROOT, b"out", RenameFlags::default()));
    erofs(s.rename(src, b"file", dst, b"in", RenameFlags::default()));
    erofs(s.link(f, InodeNo::ROOT, b"outside").map(drop));
    erofs(s.rename(
        InodeNo::ROOT,
        b"ro",
        InodeNo::ROOT,
        b"moved",
        RenameFlags::default(),
    ));
    erofs(s.set_flags(f, InodeFlags::NODUMP, Caller::ROOT).map(drop));
    erofs(s.open_file(f, true, false).map(drop));
    assert!(s.read_to_vec(f, 0, 10)?.iter().all(|&b| b == 7));
    // The source stays writable, and a snapshot of the snapshot may be writable again.
    s.write(s.lookup(src, b"file")?.ino, 0, b"ok")?;
    let rw = s.snapshot(
        dst,
        InodeNo::ROOT,
        b"rw",
        &SnapshotOptions::default(),
        &Caller::ROOT,
    )?;
    s.write(s.lookup(rw.ino, b"file")?.ino, 0, b"ok")?;
    let removed = s.remove_tree(InodeNo::ROOT, b"ro", &Caller::ROOT)?;
    assert!(removed >= 58, "{removed}");
    assert!(matches!(
        s.lookup(InodeNo::ROOT, b"ro"),
        Err(Error::NotFound)
    ));
    s.commit()?;
    assert_clean(&s)
}

fn refused_whole_for_a_caller_who_could_not_cp_a() -> Result<()> {
    let (_d, s) = fresh();
    let src = populate(&s)?;
    s.commit()?;
    let inodes = s.stats()?.inodes;
    let other = User(1001, 1001);
    // deep (0700, owned by 1000) cannot be read by 1001.
    let r = s.snapshot(
        src,
        InodeNo::ROOT,
        b"dst",
        &SnapshotOptions::default(),
        &other,
    );
    assert!(matches!(r, Err(Error::Denied)), "{r:?}");
    // No write permission on the destination's parent (root is 0755 root).
    let me = User(1000, 1000);
    let r = s.snapshot(
        s.lookup(src, b"file")?.ino,
        InodeNo::ROOT,
        b"d",
        &SnapshotOptions::default(),
        &me,
    );
    assert!(matches!(r, Err(Error::Denied)), "{r:?}");
    // A device node needs CAP_MKNOD, even for the owner of the rest.
    let home = s.mkdir(InodeNo::ROOT, b"home", 0o777, ME)?.ino;
    let r = s.snapshot(src, home, b"copy", &SnapshotOptions::default(), &me);
    assert!(matches!(r, Err(Error::NotPermitted)), "{r:?}");
    assert!(s.readdir(home, 2, 100)?.is_empty(), "nothing created");
    s.unlink(s.lookup(src, b"sub")?.ino, b"tty")?;
    // Without CAP_CHOWN the copy is the caller's, as cp -a leaves it; trusted.* is not copied.
    let c = s.snapshot(src, home, b"copy", &SnapshotOptions::default(), &me)?;
    let f = s.lookup(c.ino, b"file")?;
    assert_eq!((f.uid, f.gid), (1000, 1000));
    assert!(matches!(
        s.getxattr(f.ino, b"trusted.t"),
        Err(Error::NoAttr)
    ));
    assert_eq!(s.getxattr(f.ino, b"user.color")?, b"blue");
    s.remove_tree(home, b"copy", &me)?;
    s.commit()?;
    assert_eq!(s.stats()?.inodes, inodes);
    assert_clean(&s)
}

fn single_file_snapshot_keeps_holes() -> Result<()> {
    let (_d, s) = fresh();
    let f = s
        .create(InodeNo::ROOT, b"vm.img", &NewInode::regular(0o644), ME)?
        .ino;
    s.write(f, 1 << 20, &[1u8; 8192])?;
    s.write(f, 1 << 30, &[2u8; 4096])?;
    s.commit()?;
    let before = s.stats()?.referenced_bytes;
    let c = s.snapshot(
        f,
        InodeNo::ROOT,
        b"copy.img",
        &SnapshotOptions::default(),
        &Caller::ROOT,
    )?;
    assert_eq!(c.size, (1 << 30) + 4096);
    assert_eq!(c.allocated, s.getattr(f)?.allocated);
    assert_eq!(data_runs(&s, c.ino, c.size)?, vec![1 << 20, 1 << 30]);
    s.commit()?;
    assert_eq!(s.stats()?.referenced_bytes, before);
    assert_clean(&s)
}

fn crash_during_the_build_leaves_nothing_after_reopen() -> Result<()> {
    let (dir, s) = fresh();
    let big = s.mkdir(InodeNo::ROOT, b"big", 0o755, ME)?.ino;
    for i in 0..(3 * SNAPSHOT_BATCH) {
        let f = s.create(
            big,
            format!("{i}").as_bytes(),
            &NewInode::regular(0o644),
            ME,
        )?;
        s.write(f.ino, 0, b"data")?;
    }
    s.commit()?;
    let inodes = s.stats()?.inodes;
    let crashed = tempfile::tempdir().expect("tempdir");
    let mut copied = false;
    let mut progress = |p: TreeProgress| {
        if !copied && p.phase == TreePhase::Copying {
            // The first batch is in: commit it and keep the store as a crash would leave it.
            s.commit().expect("commit");
            for e in std::fs::read_dir(dir.path()).expect("read_dir").flatten() {
                std::fs::copy(e.path(), crashed.path().join(e.file_name())).expect("copy");
            }
            copied = true;
        }
    };
    s.snapshot_with_progress(
        big,
        InodeNo::ROOT,
        b"snap",
        &SnapshotOptions::default(),
        &Caller::ROOT,
        &mut progress,
    )?;
    assert!(copied);
    drop(s);
    // The half-built tree is in that commit, detached: clean, and DST absent.
    let ro = Store::open(
        crashed.path(),
        &OpenOptions {
            read_only: true,
            ..opts()
        },
    )?;
    assert_clean(&ro)?;
    assert!(matches!(
        ro.lookup(InodeNo::ROOT, b"snap"),
        Err(Error::NotFound)
    ));
    assert!(
        ro.stats()?.inodes > inodes,
        "the commit holds part of the copy"
    );
    drop(ro);
    // Opening frees it.
    let s = Store::open(crashed.path(), &opts())?;
    assert!(matches!(
        s.lookup(InodeNo::ROOT, b"snap"),
        Err(Error::NotFound)
    ));
    s.commit()?;
    assert_eq!(s.stats()?.inodes, inodes);
    assert_clean(&s)
}

fn crash_during_removal_frees_the_rest_at_open() -> Result<()> {
    let (dir, s) = fresh();
    let big = s.mkdir(InodeNo::ROOT, b"big", 0o755, ME)?.ino;
    for i in 0..(3 * REMOVE_BATCH) {
        let d = s.mkdir(big, format!("d{i}").as_bytes(), 0o755, ME)?;
        if i % 100 == 0 {
            s.create(d.ino, b"f", &NewInode::regular(0o644), ME)?;
        }
    }
    s.commit()?;
    let crashed = tempfile::tempdir().expect("tempdir");
    let mut copied = false;
    let mut progress = |_p: TreeProgress| {
        // The checks report progress too; copy once the tree is detached and partly freed.
        if !copied && s.lookup(InodeNo::ROOT, b"big").is_err() {
            s.commit().expect("commit");
            for e in std::fs::read_dir(dir.path()).expect("read_dir").flatten() {
                std::fs::copy(e.path(), crashed.path().join(e.file_name())).expect("copy");
            }
            copied = true;
        }
    };
    s.remove_tree_with_progress(InodeNo::ROOT, b"big", &Caller::ROOT, &mut progress)?;
    assert!(copied);
    drop(s);
    let ro = Store::open(
        crashed.path(),
        &OpenOptions {
            read_only: true,
            ..opts()
        },
    )?;
    assert_clean(&ro)?;
    assert!(ro.stats()?.inodes > 1);
    drop(ro);
    let s = Store::open(crashed.path(), &opts())?;
    s.commit()?;
    assert_eq!(s.stats()?.inodes, 1);
    assert_clean(&s)
}

fn removal_leaves_open_files_readable_until_closed() -> Result<()> {
    let (_d, s) = fresh();
    let d = s.mkdir(InodeNo::ROOT, b"d", 0o755, ME)?.ino;
    let f = s.create_open(d, b"f", 0o644, ME)?.ino;
    s.write(f, 0, b"still here")?;
    s.opendir(d)?;
    s.remove_tree(InodeNo::ROOT, b"d", &Caller::ROOT)?;
    assert_eq!(s.read_to_vec(f, 0, 10)?, b"still here");
    s.commit()?;
    assert_clean(&s)?;
    s.release(f)?;
    s.releasedir(d)?;
    s.commit()?;
    assert_eq!(s.stats()?.inodes, 1);
    assert_clean(&s)
}

fn removal_is_refused_whole_without_rm_r_rights() -> Result<()> {
    let (_d, s) = fresh();
    let home = s.mkdir(InodeNo::ROOT, b"home", 0o777, ME)?.ino;
    let t = s.mkdir(home, b"t", 0o755, ME)?.ino;
    let inner = s.mkdir(t, b"inner", 0o755, Caller::ROOT)?.ino;
    s.create(inner, b"f", &NewInode::regular(0o644), Caller::ROOT)?;
    let r = s.remove_tree(home, b"t", &User(1000, 1000));
    assert!(matches!(r, Err(Error::Denied)), "{r:?}");
    assert!(s.lookup(inner, b"f").is_ok(), "nothing removed");
    s.set_flags(
        s.lookup(inner, b"f")?.ino,
        InodeFlags::IMMUTABLE,
        Caller::ROOT,
    )?;
    let r = s.remove_tree(home, b"t", &Caller::ROOT);
    assert!(matches!(r, Err(Error::NotPermitted)), "{r:?}");
    assert!(s.lookup(inner, b"f").is_ok(), "nothing removed");
    s.commit()?;
    assert_clean(&s)
}

/// A random tree built from `ops` (each a small number), for the property test.
fn random_tree(s: &Store, top: InodeNo, ops: &[(u8, u16, u16)], prefix: &str) -> Result<()> {
    // Start from what the tree has, so that changes reach inodes a snapshot shares.
    let mut dirs = vec![top];
    let mut files: Vec<InodeNo> = Vec::new();
    let mut walk = vec![top];
    while let Some(d) = walk.pop() {
        for e in s.readdir(d, 2, usize::MAX)? {
            match e.kind {
                FileKind::Directory => {
                    dirs.push(e.ino);
                    walk.push(e.ino);
                }
                FileKind::Regular => files.push(e.ino),
                _ => {}
            }
        }
    }
    for (i, &(op, a, b)) in ops.iter().enumerate() {
        let dir = dirs[a as usize % dirs.len()];
        let name = format!("{prefix}{i}");
        match op % 7 {
            0 => dirs.push(s.mkdir(dir, name.as_bytes(), 0o755, ME)?.ino),
            1 | 2 => {
                let f = s
                    .create(dir, name.as_bytes(), &NewInode::regular(0o640), ME)?
                    .ino;
                s.write(f, u64::from(b) * 1000, &vec![op; usize::from(b % 9000)])?;
                files.push(f);
            }
            3 if !files.is_empty() => {
                s.link(files[b as usize % files.len()], dir, name.as_bytes())?;
            }
            4 => {
                s.symlink(dir, name.as_bytes(), format!("t{b}").as_bytes(), ME)?;
            }
            5 if !files.is_empty() => {
                let f = files[b as usize % files.len()];
                s.setxattr(f, format!("user.x{b}").as_bytes(), &[op; 3], 0)?;
            }
            6 if op % 2 == 0 && !files.is_empty() => {
                // Overwrite part of an existing (maybe shared) file.
                let f = files[b as usize % files.len()];
                s.write(f, u64::from(a % 20_000), &[op; 5000])?;
            }
            6 => {
                s.create(
                    dir,
                    name.as_bytes(),
                    &NewInode::new(FileKind::Fifo, 0o600, 0),
                    ME,
                )?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Model test: a random tree and its snapshot describe the same; random changes to one side
/// leave the other as it was (compared with a snapshot taken before the changes).
fn random_trees_snapshot_equal_and_diverge() {
    let ops = proptest::collection::vec((any::<u8>(), any::<u16>(), any::<u16>()), 1..120);
    let muts = proptest::collection::vec((any::<u8>(), any::<u16>(), any::<u16>()), 1..30);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 24,
        ..ProptestConfig::default()
    });
    runner
        .run(&(ops, muts, any::<bool>()), |(ops, muts, mutate_src)| {
            let (_d, s) = fresh();
            let run = || -> Result<()> {
                let src = s.mkdir(InodeNo::ROOT, b"src", 0o755, ME)?.ino;
                random_tree(&s, src, &ops, "n")?;
                let none = SnapshotOptions::default();
                let a = s
                    .snapshot(src, InodeNo::ROOT, b"a", &none, &Caller::ROOT)?
                    .ino;
                assert_same_tree(&s, src, a)?;
                let b = s
                    .snapshot(src, InodeNo::ROOT, b"b", &none, &Caller::ROOT)?
                    .ino;
                let (changed, kept) = if mutate_src { (src, b) } else { (b, src) };
                random_tree(&s, changed, &muts, "m")?;
                assert_same_tree(&s, kept, a)?;
                s.commit()?;
                assert_clean(&s)?;
                s.remove_tree(InodeNo::ROOT, b"b", &Caller::ROOT)?;
                s.remove_tree(InodeNo::ROOT, b"a", &Caller::ROOT)?;
                s.commit()?;
                assert_clean(&s)
            };
            run().map_err(|e| TestCaseError::fail(format!("{e:?}")))
        })
        .expect("property");
}

/// Names below `dir`, by a readdir walk.
fn names_below(s: &Store, dir: InodeNo) -> Result<u64> {
    let mut n = 0;
    let mut todo = vec![dir];
    while let Some(d) = todo.pop() {
        for e in s.readdir(d, 2, usize::MAX)? {
            n += 1;
            if e.kind == FileKind::Directory {
                todo.push(e.ino);
            }
        }
    }
    Ok(n)
}

fn progress_counts_first_then_ends_at_an_exact_total() -> Result<()> {
    // Issue 13 (progress of `cowfs snapshot`): the count of a tree is exact (every name once,
    // hard links per name), a snapshot's copying and a removal's removing phases know their
    // totals from it and end at them, their counts never going back.
    let (_d, s) = fresh();
    let src = populate(&s)?;
    // One directory past a read of the count, and enough for several batches of the copy.
    let wide = s.mkdir(src, b"wide", 0o755, ME)?.ino;
    for i in 0..9000 {
        s.create(
            wide,
            format!("{i}").as_bytes(),
            &NewInode::regular(0o644),
            ME,
        )?;
    }
    for i in 0..40 {
        let d = s.mkdir(src, format!("d{i}").as_bytes(), 0o755, ME)?.ino;
        for j in 0..20 {
            s.create(d, format!("{j}").as_bytes(), &NewInode::regular(0o644), ME)?;
        }
    }
    s.commit()?;
    let names = names_below(&s, src)?;
    let mut counted = Vec::new();
    assert_eq!(s.count_tree(src, &mut |n| counted.push(n))?, names);
    assert!(counted.windows(2).all(|w| w[0] <= w[1]), "{counted:?}");
    assert_eq!(counted.last(), Some(&names));

    let increasing_to = |seen: &[TreeProgress], phase: TreePhase, total: Option<u64>| {
        let done: Vec<u64> = seen
            .iter()
            .filter(|p| p.phase == phase)
            .map(|p| p.done)
            .collect();
        assert!(done.windows(2).all(|w| w[0] <= w[1]), "{phase:?}: {done:?}");
        assert!(
            seen.iter()
                .filter(|p| p.phase == phase)
                .all(|p| p.total == total),
            "{phase:?}: {seen:?}"
        );
        done.last().copied()
    };
    let mut seen = Vec::new();
    let snap = s.snapshot_with_progress(
        src,
        InodeNo::ROOT,
        b"snap",
        &SnapshotOptions::default(),
        &Caller::ROOT,
        &mut |p| seen.push(p),
    )?;
    let first_copy = seen.iter().position(|p| p.phase == TreePhase::Copying);
    assert!(
        first_copy.is_some_and(|i| seen[..i].iter().all(|p| p.phase == TreePhase::Counting)
            && seen[i..].iter().all(|p| p.phase == TreePhase::Copying)),
        "counting, then copying: {seen:?}"
    );
    assert_eq!(increasing_to(&seen, TreePhase::Counting, None), Some(names));
    // SRC itself, then every name.
    assert_eq!(
        increasing_to(&seen, TreePhase::Copying, Some(names + 1)),
        Some(names + 1)
    );
    assert!(
        seen.iter()
            .filter(|p| p.phase == TreePhase::Copying)
            .count()
            > 3,
        "one report per batch: {seen:?}"
    );
    assert_eq!(s.count_tree(snap.ino, &mut |_| {})?, names);
    assert_same_tree(&s, src, snap.ino)?;

    let mut seen = Vec::new();
    let removed =
        s.remove_tree_with_progress(InodeNo::ROOT, b"snap", &Caller::ROOT, &mut |p| seen.push(p))?;
    assert_eq!(removed, names + 1);
    let first_removal = seen.iter().position(|p| p.phase == TreePhase::Removing);
    assert!(
        first_removal.is_some_and(|i| seen[..i].iter().all(|p| p.phase == TreePhase::Checking)),
        "checking, then removing: {seen:?}"
    );
    assert_eq!(increasing_to(&seen, TreePhase::Checking, None), Some(names));
    assert_eq!(
        increasing_to(&seen, TreePhase::Removing, Some(names + 1)),
        Some(names + 1)
    );

    // A single file: nothing below it, one entry copied or removed.
    let file = s.lookup(src, b"file")?.ino;
    assert_eq!(s.count_tree(file, &mut |_| {})?, 0);
    let mut seen = Vec::new();
    s.snapshot_with_progress(
        file,
        InodeNo::ROOT,
        b"copy",
        &SnapshotOptions::default(),
        &Caller::ROOT,
        &mut |p| seen.push(p),
    )?;
    assert_eq!(
        seen.last(),
        Some(&TreeProgress {
            phase: TreePhase::Copying,
            done: 1,
            total: Some(1)
        })
    );
    let mut seen = Vec::new();
    s.remove_tree_with_progress(InodeNo::ROOT, b"copy", &Caller::ROOT, &mut |p| seen.push(p))?;
    assert_eq!(
        seen,
        [TreeProgress {
            phase: TreePhase::Removing,
            done: 1,
            total: Some(1)
        }]
    );
    s.commit()?;
    assert_clean(&s)
}

per_engine!(
    snapshot_is_cp_a_and_shares_every_block,
    snapshots_diverge_on_writes_to_either_side,
    read_only_snapshot_refuses_every_change_but_whole_removal,
    refused_whole_for_a_caller_who_could_not_cp_a,
    single_file_snapshot_keeps_holes,
    crash_during_the_build_leaves_nothing_after_reopen,
    crash_during_removal_frees_the_rest_at_open,
    removal_leaves_open_files_readable_until_closed,
    removal_is_refused_whole_without_rm_r_rights,
    random_trees_snapshot_equal_and_diverge,
    progress_counts_first_then_ends_at_an_exact_total,
);

/// Timing of a snapshot and a removal of `COWFS_SNAP_FILES` files (default 10,000) in 100
/// directories, on disk with redb; `cargo test --release -p cowstore --test snapshot -- --ignored
/// --nocapture timing`.
#[test]
#[ignore]
fn timing() -> Result<()> {
    let n: usize = std::env::var("COWFS_SNAP_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let (_d, s) = fresh();
    let src = s.mkdir(InodeNo::ROOT, b"src", 0o755, ME)?.ino;
    let mut dirs = Vec::new();
    for i in 0..100 {
        dirs.push(s.mkdir(src, format!("d{i}").as_bytes(), 0o755, ME)?.ino);
    }
    for i in 0..n {
        let f = s.create(
            dirs[i % 100],
            format!("f{i}").as_bytes(),
            &NewInode::regular(0o644),
            ME,
        )?;
        s.write(f.ino, 0, &[1u8; 100])?;
    }
    s.commit()?;
    let t = std::time::Instant::now();
    let names = s.count_tree(src, &mut |_| {})?;
    let counted = t.elapsed();
    let t = std::time::Instant::now();
    let mut last = t;
    let mut worst = std::time::Duration::ZERO;
    s.snapshot_with_progress(
        src,
        InodeNo::ROOT,
        b"dst",
        &SnapshotOptions::default(),
        &Caller::ROOT,
        &mut |_| {
            worst = worst.max(last.elapsed());
            last = std::time::Instant::now();
        },
    )?;
    let built = t.elapsed();
    s.commit()?;
    let committed = t.elapsed();
    let t = std::time::Instant::now();
    s.remove_tree(InodeNo::ROOT, b"dst", &Caller::ROOT)?;
    s.commit()?;
    let removed = t.elapsed();
    eprintln!(
        "{n} files: count of {names} names {counted:?}; snapshot (counting again) {built:?} \
         (+commit: {committed:?}, longest batch {worst:?}); remove+commit {removed:?}"
    );
    Ok(())
}
