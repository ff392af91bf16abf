//! check() finds each class of injected inconsistency, repair() fixes it, and a second check is
//! clean; data that was fine stays readable.

use cowstore::testing::Damage;
use cowstore::*;

const ME: Caller = Caller { uid: 0, gid: 0 };

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    a: InodeNo,
    b: InodeNo,
    data: Vec<u8>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    Store::mkfs(dir.path(), &MkfsOptions::default()).expect("mkfs");
    let store = Store::open(
        dir.path(),
        &OpenOptions {
            commit_interval: None,
            ..Default::default()
        },
    )
    .expect("open");
    let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let a = store
        .create(InodeNo::ROOT, b"a", &regular(), ME)
        .expect("a")
        .ino;
    store.write(a, 0, &data).expect("write");
    let d = store
        .mkdir(InodeNo::ROOT, b"dir", 0o755, ME)
        .expect("dir")
        .ino;
    let b = store.create(d, b"b", &regular(), ME).expect("b").ino;
    store.clone_range(a, 0, b, 0, u64::MAX).expect("clone");
    store.write(b, 100, b"changed").expect("write b");
    store.commit().expect("commit");
    assert!(store.check().expect("check").is_clean());
    Fixture {
        _dir: dir,
        store,
        a,
        b,
        data,
    }
}

fn regular() -> NewInode {
    NewInode {
        kind: FileKind::Regular,
        perm: 0o644,
        rdev: 0,
        symlink_target: None,
    }
}

fn damage_detect_repair(f: &Fixture, damage: Damage, expect: ProblemKind) -> RepairSummary {
    f.store.inject_damage(&damage).expect("inject");
    let report = f.store.check().expect("check");
    assert!(
        report.problems.iter().any(|p| p.kind == expect),
        "{damage:?}: expected a {expect:?} problem, got {:#?}",
        report.problems
    );
    let summary = f.store.repair().expect("repair");
    assert!(
        !summary.actions.is_empty(),
        "{damage:?}: repair did nothing"
    );
    let after = f.store.check().expect("check after repair");
    assert!(
        after.is_clean(),
        "{damage:?}: still broken after repair: {:#?} (actions {:#?})",
        after.problems,
        summary.actions
    );
    summary
}

#[test]
fn wrong_refcount_is_found_and_rebuilt() {
    let f = fixture();
    damage_detect_repair(&f, Damage::WrongRefcount(f.a), ProblemKind::Refcount);
    assert_eq!(f.store.read_to_vec(f.a, 0, 1 << 20).expect("read"), f.data);
}

#[test]
fn leaked_block_is_found_and_freed() {
    let f = fixture();
    damage_detect_repair(&f, Damage::LeakedBlock, ProblemKind::LeakedBlock);
}

#[test]
fn double_reference_is_found_and_counted() {
    let f = fixture();
    let c = f
        .store
        .create(InodeNo::ROOT, b"c", &regular(), ME)
        .expect("c")
        .ino;
    f.store.commit().expect("commit");
    damage_detect_repair(
        &f,
        Damage::DoubleReference { src: f.a, dst: c },
        ProblemKind::DoubleReference,
    );
    // After repair both files share the blocks properly: writing one leaves the other intact.
    f.store.write(c, 0, b"zzz").expect("write c");
    assert_eq!(
        f.store.read_to_vec(f.a, 0, 3).expect("read a"),
        &f.data[..3]
    );
    f.store.commit().expect("commit");
    assert!(f.store.check().expect("check").is_clean());
}

#[test]
fn wrong_link_count_is_corrected() {
    let f = fixture();
    damage_detect_repair(&f, Damage::WrongLinkCount(f.a, 5), ProblemKind::LinkCount);
    assert_eq!(f.store.getattr(f.a).expect("attr").nlink, 1);
}

#[test]
fn dangling_dirent_is_removed() {
    let f = fixture();
    damage_detect_repair(
        &f,
        Damage::DanglingDirent {
            parent: InodeNo::ROOT,
            name: b"ghost".to_vec(),
        },
        ProblemKind::DanglingDirent,
    );
    assert!(matches!(
        f.store.lookup(InodeNo::ROOT, b"ghost"),
        Err(Error::NotFound)
    ));
}

#[test]
fn unlisted_orphan_is_reclaimed() {
    let f = fixture();
    let before = f.store.stats().expect("stats");
    damage_detect_repair(
        &f,
        Damage::Orphan {
            parent: InodeNo::ROOT,
            name: b"a".to_vec(),
        },
        ProblemKind::Orphan,
    );
    assert!(matches!(f.store.getattr(f.a), Err(Error::NotFound)));
    let after = f.store.stats().expect("stats");
    assert!(after.referenced_bytes <= before.referenced_bytes);
    // b, which shared a's blocks, is intact.
    let mut want = f.data.clone();
    want[100..107].copy_from_slice(b"changed");
    assert_eq!(f.store.read_to_vec(f.b, 0, 1 << 20).expect("read b"), want);
}

#[test]
fn disconnected_file_goes_to_lost_and_found() {
    let f = fixture();
    damage_detect_repair(
        &f,
        Damage::Disconnect {
            parent: InodeNo::ROOT,
            name: b"dir".to_vec(),
        },
        ProblemKind::Disconnected,
    );
    let lf = f
        .store
        .lookup(InodeNo::ROOT, b"lost+found")
        .expect("lost+found");
    let entries = f.store.readdir(lf.ino, 0, 100).expect("readdir");
    let dir = entries
        .iter()
        .find(|e| e.kind == FileKind::Directory && e.name.starts_with(b"#"))
        .expect("recovered dir");
    let b = f
        .store
        .lookup(dir.ino, b"b")
        .expect("b inside the recovered directory");
    assert_eq!(b.ino, f.b);
}

#[test]
fn repair_of_a_clean_store_changes_nothing() {
    let f = fixture();
    let gen = f.store.stats().expect("stats").generation;
    let s = f.store.repair().expect("repair");
    assert!(s.actions.is_empty(), "{:?}", s.actions);
    assert!(f.store.check().expect("check").is_clean());
    assert!(f.store.stats().expect("stats").generation >= gen);
}
