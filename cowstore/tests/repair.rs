//! check() finds each class of injected inconsistency, repair() fixes it, and a second check is
//! clean; data that was fine stays readable.

#[macro_use]
mod engines;

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
    Store::mkfs(dir.path(), &engines::mkfs_opts(4096)).expect("mkfs");
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
    NewInode::regular(0o644)
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

fn wrong_refcount_is_found_and_rebuilt() {
    let f = fixture();
    damage_detect_repair(&f, Damage::WrongRefcount(f.a), ProblemKind::Refcount);
    assert_eq!(f.store.read_to_vec(f.a, 0, 1 << 20).expect("read"), f.data);
}

fn leaked_block_is_found_and_freed() {
    let f = fixture();
    damage_detect_repair(&f, Damage::LeakedBlock, ProblemKind::LeakedBlock);
}

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

fn referenced_block_on_the_free_list_is_taken_off_it() {
    let f = fixture();
    damage_detect_repair(
        &f,
        Damage::FreeReferencedBlock(f.a),
        ProblemKind::FreeOverlap,
    );
    assert_eq!(f.store.read_to_vec(f.a, 0, 1 << 20).expect("read"), f.data);
}

fn wrong_link_count_is_corrected() {
    let f = fixture();
    damage_detect_repair(&f, Damage::WrongLinkCount(f.a, 5), ProblemKind::LinkCount);
    assert_eq!(f.store.getattr(f.a).expect("attr").nlink, 1);
}

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

fn repair_of_a_clean_store_changes_nothing() {
    let f = fixture();
    let gen = f.store.stats().expect("stats").generation;
    let s = f.store.repair().expect("repair");
    assert!(s.actions.is_empty(), "{:?}", s.actions);
    assert!(f.store.check().expect("check").is_clean());
    assert!(f.store.stats().expect("stats").generation >= gen);
}

/// The pool blocks of a file's extents, as (pool offset, length) in bytes.
fn pool_ranges(store: &Store, ino: InodeNo) -> Vec<(u64, u64)> {
    store
        .extents(ino)
        .expect("extents")
        .iter()
        .map(|e| (e.pool_offset, e.len))
        .collect()
}

fn pool_bytes(store: &Store, ranges: &[(u64, u64)]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(off, len) in ranges {
        let mut buf = vec![0u8; len as usize];
        store.pool().read_at(&mut buf, off).expect("read pool");
        out.extend_from_slice(&buf);
    }
    out
}

fn damaged_or_missing_inode_record_is_rebuilt_into_lost_and_found() {
    // Regression (issue 10, defect 3): repair dropped the entry and extents of a file whose
    // inode record failed its checksum (or was missing), freeing and punching its blocks.
    for damage in [Damage::CorruptInode, Damage::MissingInode] {
        let f = fixture();
        let ranges = pool_ranges(&f.store, f.a);
        let pool_before = pool_bytes(&f.store, &ranges);
        let free_before = f.store.stats().expect("stats").free_bytes;
        let d = damage(f.a);
        f.store.inject_damage(&d).expect("inject");
        let report = f.store.check().expect("check");
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.kind == ProblemKind::DanglingDirent),
            "{d:?}: {:#?}",
            report.problems
        );
        if matches!(d, Damage::CorruptInode(_)) {
            assert!(
                report
                    .problems
                    .iter()
                    .any(|p| p.kind == ProblemKind::Corrupt && p.ino == Some(f.a.0)),
                "{d:?}: {:#?}",
                report.problems
            );
        }
        let summary = f.store.repair().expect("repair");
        assert!(summary.unfixable.is_empty(), "{d:?}: {summary:#?}");
        let after = f.store.check().expect("check after repair");
        assert!(after.is_clean(), "{d:?}: {:#?}", after.problems);
        // Every byte is reachable in /lost+found/#ino, from the very same pool blocks.
        let lf = f.store.lookup(InodeNo::ROOT, b"lost+found").expect("lf");
        let name = format!("#{}", f.a.0);
        let attr = f.store.lookup(lf.ino, name.as_bytes()).expect("rebuilt");
        assert_eq!(attr.ino, f.a);
        assert_eq!(
            (attr.kind, attr.perm, attr.uid, attr.nlink),
            (FileKind::Regular, 0o600, 0, 1)
        );
        assert_eq!(attr.size, f.data.len().div_ceil(4096) as u64 * 4096);
        let got = f.store.read_to_vec(f.a, 0, attr.size).expect("read");
        assert_eq!(&got[..f.data.len()], &f.data[..], "{d:?}");
        assert!(got[f.data.len()..].iter().all(|&x| x == 0));
        assert_eq!(
            pool_ranges(&f.store, f.a),
            ranges,
            "{d:?}: its blocks moved"
        );
        assert_eq!(pool_bytes(&f.store, &ranges), pool_before, "{d:?}: punched");
        assert_eq!(f.store.stats().expect("stats").free_bytes, free_before);
        assert!(matches!(
            f.store.lookup(InodeNo::ROOT, b"a"),
            Err(Error::NotFound)
        ));
        let mut want_b = f.data.clone();
        want_b[100..107].copy_from_slice(b"changed");
        assert_eq!(f.store.read_to_vec(f.b, 0, 1 << 20).expect("b"), want_b);
        let again = f.store.repair().expect("second repair");
        assert!(again.actions.is_empty(), "{d:?}: {:?}", again.actions);
    }
}

fn damaged_directory_record_is_left_and_its_files_stay_reachable() {
    // Regression (issue 10, defect 3): a directory whose record failed its checksum lost every
    // entry in it, and the files named only there were reclaimed with their blocks.
    let f = fixture();
    let dir = f.store.lookup(InodeNo::ROOT, b"dir").expect("dir").ino;
    let ranges = pool_ranges(&f.store, f.b);
    let free_before = f.store.stats().expect("stats").free_bytes;
    f.store
        .inject_damage(&Damage::CorruptInode(dir))
        .expect("inject");
    assert!(!f.store.check().expect("check").is_clean());
    let summary = f.store.repair().expect("repair");
    assert!(!summary.unfixable.is_empty(), "{summary:#?}");
    // What is left concerns the damaged record alone: it, and the entries naming or in it.
    let after = f.store.check().expect("check after repair");
    assert!(!after.is_clean());
    let about_dir = format!("inode {}", dir.0);
    for p in &after.problems {
        assert!(
            matches!(p.kind, ProblemKind::Corrupt | ProblemKind::DanglingDirent)
                && (p.ino == Some(dir.0) || p.message.contains(&about_dir)),
            "{p}"
        );
    }
    // b is reachable through /lost+found, with every byte, from the same blocks.
    let lf = f.store.lookup(InodeNo::ROOT, b"lost+found").expect("lf");
    let b = f
        .store
        .lookup(lf.ino, format!("#{}", f.b.0).as_bytes())
        .expect("b in lost+found");
    assert_eq!(b.ino, f.b);
    let mut want_b = f.data.clone();
    want_b[100..107].copy_from_slice(b"changed");
    assert_eq!(f.store.read_to_vec(f.b, 0, 1 << 20).expect("b"), want_b);
    assert_eq!(pool_ranges(&f.store, f.b), ranges);
    assert_eq!(f.store.stats().expect("stats").free_bytes, free_before);
    // Repair converges: a second one changes nothing and leaves the same report.
    let again = f.store.repair().expect("second repair");
    assert!(again.actions.is_empty(), "{:?}", again.actions);
    assert_eq!(f.store.check().expect("check").problems, after.problems);
}

fn unreadable_extent_record_keeps_every_block_allocated() {
    // Regression (issue 10, defect 3): repair removed an extent record that failed its
    // checksum and freed and punched the blocks it named; nobody can tell which blocks those
    // are, so none may be freed and no refcount lowered while the record is there.
    let f = fixture();
    let ranges = pool_ranges(&f.store, f.a);
    let pool_before = pool_bytes(&f.store, &ranges);
    let free_before = f.store.stats().expect("stats").free_bytes;
    f.store
        .inject_damage(&Damage::CorruptExtent(f.a))
        .expect("inject");
    let report = f.store.check().expect("check");
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.kind == ProblemKind::Corrupt && p.ino == Some(f.a.0)),
        "{:#?}",
        report.problems
    );
    let summary = f.store.repair().expect("repair");
    assert!(!summary.unfixable.is_empty(), "{summary:#?}");
    assert_eq!(f.store.stats().expect("stats").free_bytes, free_before);
    assert_eq!(pool_bytes(&f.store, &ranges), pool_before, "punched");
    // b shared a's blocks: unlinking it must not free what a's unreadable extent names.
    let dir = f.store.lookup(InodeNo::ROOT, b"dir").expect("dir").ino;
    f.store.unlink(dir, b"b").expect("unlink b");
    f.store.commit().expect("commit");
    assert_eq!(
        pool_bytes(&f.store, &ranges[..]),
        pool_before,
        "freed with b"
    );
    let after = f.store.check().expect("check");
    assert!(
        after
            .problems
            .iter()
            .any(|p| p.kind == ProblemKind::Corrupt && p.ino == Some(f.a.0)),
        "the record stays, reported: {:#?}",
        after.problems
    );
}

per_engine!(
    an_orphan_with_a_damaged_record_does_not_keep_the_store_from_opening,
    wrong_refcount_is_found_and_rebuilt,
    leaked_block_is_found_and_freed,
    double_reference_is_found_and_counted,
    referenced_block_on_the_free_list_is_taken_off_it,
    wrong_link_count_is_corrected,
    dangling_dirent_is_removed,
    unlisted_orphan_is_reclaimed,
    disconnected_file_goes_to_lost_and_found,
    repair_of_a_clean_store_changes_nothing,
    damaged_or_missing_inode_record_is_rebuilt_into_lost_and_found,
    damaged_directory_record_is_left_and_its_files_stay_reachable,
    unreadable_extent_record_keeps_every_block_allocated,
);

fn an_orphan_with_a_damaged_record_does_not_keep_the_store_from_opening() {
    // Regression (issue 10, defect 3 follow-up, found by the fsck review): recovery reclaimed all
    // orphans in one operation, so one orphan whose record failed its checksum made every
    // writable open fail, and `fsck --repair` could not even open the store to fix it.
    let dir = tempfile::tempdir().expect("tmp");
    Store::mkfs(dir.path(), &engines::mkfs_opts(4096)).expect("mkfs");
    let opts = OpenOptions {
        commit_interval: None,
        ..Default::default()
    };
    let s = Store::open(dir.path(), &opts).expect("open");
    let f = s
        .create_open(InodeNo::ROOT, b"f", 0o644, Caller { uid: 0, gid: 0 })
        .expect("create")
        .ino;
    s.write(f, 0, &[7u8; 8192]).expect("write");
    s.unlink(InodeNo::ROOT, b"f").expect("unlink while open");
    s.inject_damage(&cowstore::testing::Damage::CorruptInode(f))
        .expect("damage");
    drop(s); // the handle dies with the process: f stays an orphan
    let s = Store::open(dir.path(), &opts).expect("a damaged orphan must not stop the open");
    let report = s.check().expect("check");
    assert!(!report.is_clean(), "fsck still sees the damaged orphan");
    s.repair().expect("repair opens and runs");
}
