//! `Store::readdir_plus`: a directory's entries with their attributes in one store call (FUSE
//! readdirplus), bounded like `readdir_until`, importing no subdirectory of an overlay.

#[macro_use]
mod engines;

use cowstore::testing::Damage;
use cowstore::*;
use std::path::Path;
use std::sync::Arc;

const ME: Caller = Caller { uid: 0, gid: 0 };

fn fresh() -> Store {
    let env = io::MemEnv::new();
    Store::mkfs_env(Arc::new(env.clone()), &engines::mkfs_opts(4096)).expect("mkfs");
    let opts = OpenOptions {
        commit_interval: None,
        ..Default::default()
    };
    Store::open_env(Arc::new(env), &opts).expect("open")
}

fn file(s: &Store, dir: InodeNo, name: &str) -> Result<InodeAttr> {
    let new = NewInode {
        kind: FileKind::Regular,
        perm: 0o640,
        rdev: 0,
        symlink_target: None,
    };
    s.create(dir, name.as_bytes(), &new, ME)
}

fn readdir_plus_matches_readdir_and_getattr() -> Result<()> {
    let s = fresh();
    let d = s.mkdir(InodeNo::ROOT, b"d", 0o755, ME)?.ino;
    for i in 0..100 {
        if i % 4 == 0 {
            s.mkdir(d, format!("sub{i}").as_bytes(), 0o700, ME)?;
        } else {
            s.write(file(&s, d, &format!("f{i}"))?.ino, 0, &vec![7; i])?;
        }
    }
    let end = s.dir_end(d)?;
    let plain = s.readdir_until(d, 0, end, usize::MAX)?;
    let plus = s.readdir_plus(d, 0, end, usize::MAX)?;
    assert_eq!(plus.len(), 102);
    let entries: Vec<DirEntry> = plus.iter().map(|(e, _)| e.clone()).collect();
    assert_eq!(entries, plain);
    for (e, a) in &plus {
        assert_eq!(
            *a,
            s.getattr(e.ino)?,
            "{:?}",
            String::from_utf8_lossy(&e.name)
        );
    }
    assert_eq!(plus[0].1.ino, d, ".");
    assert_eq!(plus[1].1.ino, InodeNo::ROOT, "..");
    // Bounded and resumable like readdir_until: `limit` entries after `offset`, none at or
    // past `end`.
    let page = s.readdir_plus(d, plus[9].0.cookie, end, 5)?;
    let want: Vec<_> = plus[10..15].to_vec();
    assert_eq!(page, want);
    file(&s, d, "late")?;
    let rest = s.readdir_plus(d, plus[101].0.cookie, end, 10)?;
    assert!(
        rest.is_empty(),
        "an entry created past the stream's end: {rest:?}"
    );
    assert_eq!(s.readdir_plus(d, 0, s.dir_end(d)?, usize::MAX)?.len(), 103);
    assert!(matches!(
        s.readdir_plus(plus[3].0.ino, 0, u64::MAX, 10),
        Err(Error::NotDir)
    ));
    Ok(())
}

fn an_entry_whose_inode_is_gone_is_left_out() -> Result<()> {
    let s = fresh();
    // ".." of an open, removed directory whose parent was freed since.
    let a = s.mkdir(InodeNo::ROOT, b"a", 0o755, ME)?.ino;
    let b = s.mkdir(a, b"b", 0o755, ME)?.ino;
    s.opendir(b)?;
    s.rmdir(a, b"b")?;
    s.rmdir(InodeNo::ROOT, b"a")?;
    let names: Vec<Vec<u8>> = s
        .readdir_plus(b, 0, u64::MAX, 10)?
        .into_iter()
        .map(|(e, _)| e.name)
        .collect();
    assert_eq!(names, vec![b".".to_vec()]);
    s.releasedir(b)?;
    // A dangling entry (corruption, which check reports) does not make the directory
    // unlistable.
    file(&s, InodeNo::ROOT, "x")?;
    s.inject_damage(&Damage::DanglingDirent {
        parent: InodeNo::ROOT,
        name: b"ghost".to_vec(),
    })?;
    file(&s, InodeNo::ROOT, "y")?;
    let names: Vec<Vec<u8>> = s
        .readdir_plus(InodeNo::ROOT, 0, u64::MAX, 10)?
        .into_iter()
        .map(|(e, _)| e.name)
        .collect();
    assert_eq!(names, [&b"."[..], b"..", b"x", b"y"].map(<[u8]>::to_vec));
    Ok(())
}

fn readdir_plus_imports_the_directory_listed_but_not_its_subdirectories() -> Result<()> {
    // Regression (issue 11): readdirplus did a getattr per entry, and getattr imports a
    // pending lower directory: listing a directory imported every subdirectory of it too.
    let t = tempfile::tempdir().expect("tmp");
    let lower = t.path().join("lower");
    for d in ["top/one/a", "top/one/b", "top/two"] {
        std::fs::create_dir_all(lower.join(d)).expect("mkdir");
    }
    std::fs::write(lower.join("top/file"), b"x").expect("write");
    let store = t.path().join("store");
    Store::mkfs(&store, &engines::mkfs_opts(4096))?;
    let opts = |lower: &Path| OpenOptions {
        commit_interval: None,
        lower: Some(lower.to_path_buf()),
        ..Default::default()
    };
    let s = Store::open(&store, &opts(&lower))?;
    let top = s.lookup(InodeNo::ROOT, b"top")?.ino;
    let listed = s.readdir_plus(top, 0, s.dir_end(top)?, usize::MAX)?;
    let attr = |name: &[u8]| {
        listed
            .iter()
            .find(|(e, _)| e.name == name)
            .map(|(_, a)| a.clone())
            .expect("listed")
    };
    assert_eq!(attr(b".").nlink, 4, "top itself is imported: one, two");
    assert_eq!(attr(b"file").size, 1);
    // "one" is still pending: its subdirectories are not counted yet, which a link count of 1
    // says (2 would say "no subdirectories"); lookup reports it the same way.
    let one = attr(b"one");
    assert_eq!(one.nlink, 1);
    assert_eq!(s.lookup(top, b"one")?.nlink, 1);
    assert_eq!(attr(b"two").nlink, 1);
    // getattr imports it, and from then on every listing has its exact count.
    assert_eq!(s.getattr(one.ino)?.nlink, 4);
    let again = s.readdir_plus(top, 0, u64::MAX, usize::MAX)?;
    let one_again = again.iter().find(|(e, _)| e.name == b"one").expect("one");
    assert_eq!(one_again.1.nlink, 4);
    s.commit()?;
    assert!(s.check()?.is_clean());
    Ok(())
}

per_engine!(
    readdir_plus_matches_readdir_and_getattr,
    an_entry_whose_inode_is_gone_is_left_out,
    readdir_plus_imports_the_directory_listed_but_not_its_subdirectories,
);
