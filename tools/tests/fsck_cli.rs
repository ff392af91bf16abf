//! `cowfs fsck`, `inspect` and `du` on real stores: clean stores are clean; each class of injected
//! inconsistency is reported with its message and exit code 4, repaired with exit code 1, and
//! clean again after; du figures are exact for reflinked files; damaged metadata never panics and
//! a check without --repair writes nothing.

use cowstore::testing::Damage;
use cowstore::*;
use std::path::Path;
use std::process::{Command, Output};

const ME: Caller = Caller { uid: 0, gid: 0 };
const BS: u64 = 4096;

fn cowfs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cowfs"))
        .args(args)
        .output()
        .expect("run cowfs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn regular() -> NewInode {
    NewInode::regular(0o644)
}

/// /a (256 blocks), /dir/b (a reflink of a with one block rewritten), /dir/small.
fn build(dir: &Path) -> (InodeNo, InodeNo) {
    Store::mkfs(dir, &MkfsOptions::default()).expect("mkfs");
    let s = Store::open(
        dir,
        &OpenOptions {
            commit_interval: None,
            ..Default::default()
        },
    )
    .expect("open");
    let a = s
        .create(InodeNo::ROOT, b"a", &regular(), ME)
        .expect("a")
        .ino;
    s.write(a, 0, &vec![1u8; 256 * BS as usize])
        .expect("write a");
    let d = s.mkdir(InodeNo::ROOT, b"dir", 0o755, ME).expect("dir").ino;
    let b = s.create(d, b"b", &regular(), ME).expect("b").ino;
    s.clone_range(a, 0, b, 0, u64::MAX).expect("clone");
    s.write(b, 10 * BS, &vec![2u8; BS as usize]).expect("cow");
    let small = s.create(d, b"small", &regular(), ME).expect("small").ino;
    s.write(small, 0, b"hello").expect("small");
    s.close().expect("close");
    (a, b)
}

fn with_store<T>(dir: &Path, f: impl FnOnce(&Store) -> T) -> T {
    let s = Store::open(
        dir,
        &OpenOptions {
            commit_interval: None,
            ..Default::default()
        },
    )
    .expect("open");
    let out = f(&s);
    s.close().expect("close");
    out
}

fn store_str(dir: &Path) -> &str {
    dir.to_str().expect("utf-8 path")
}

#[test]
fn fsck_of_a_clean_store_exits_0() {
    let t = tempfile::tempdir().expect("tmp");
    build(t.path());
    let o = cowfs(&["fsck", store_str(t.path())]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("clean"), "{}", text(&o));
}

/// Inject a damage, then: fsck exits 4 naming it, --repair 1, fsck 0. Returns the store and
/// the inodes of /a and /dir/b.
fn damaged_then_repaired(
    damage: impl FnOnce(&Store, InodeNo, InodeNo) -> Damage,
    expect_in_output: &str,
) -> (tempfile::TempDir, InodeNo, InodeNo) {
    let t = tempfile::tempdir().expect("tmp");
    let (a, b) = build(t.path());
    let d = with_store(t.path(), |s| {
        let d = damage(s, a, b);
        s.inject_damage(&d).expect("inject");
        d
    });
    let o = cowfs(&["fsck", store_str(t.path())]);
    assert_eq!(o.status.code(), Some(4), "{d:?}: {}", text(&o));
    assert!(
        text(&o).contains(expect_in_output),
        "{d:?}: wanted {expect_in_output:?} in:\n{}",
        text(&o)
    );
    let o = cowfs(&["fsck", "--repair", store_str(t.path())]);
    assert_eq!(o.status.code(), Some(1), "{d:?} repair: {}", text(&o));
    let o = cowfs(&["fsck", store_str(t.path())]);
    assert_eq!(o.status.code(), Some(0), "{d:?} after repair: {}", text(&o));
    (t, a, b)
}

#[test]
fn wrong_refcount() {
    damaged_then_repaired(|_, a, _| Damage::WrongRefcount(a), "Refcount");
}

#[test]
fn leaked_block() {
    damaged_then_repaired(|_, _, _| Damage::LeakedBlock, "LeakedBlock");
}

#[test]
fn doubly_referenced_block() {
    damaged_then_repaired(
        |s, a, _| {
            let c = s
                .create(InodeNo::ROOT, b"c", &regular(), ME)
                .expect("c")
                .ino;
            s.commit().expect("commit");
            Damage::DoubleReference { src: a, dst: c }
        },
        "DoubleReference",
    );
}

#[test]
fn wrong_link_count() {
    damaged_then_repaired(|_, a, _| Damage::WrongLinkCount(a, 3), "LinkCount inode");
}

#[test]
fn dangling_dirent() {
    damaged_then_repaired(
        |_, _, _| Damage::DanglingDirent {
            parent: InodeNo::ROOT,
            name: b"ghost".to_vec(),
        },
        "names missing inode",
    );
}

#[test]
fn orphan() {
    damaged_then_repaired(
        |_, _, _| Damage::Orphan {
            parent: InodeNo::ROOT,
            name: b"a".to_vec(),
        },
        "Orphan",
    );
}

#[test]
fn disconnected_directory_goes_to_lost_and_found() {
    damaged_then_repaired(
        |_, _, _| Damage::Disconnect {
            parent: InodeNo::ROOT,
            name: b"dir".to_vec(),
        },
        "not reachable from the root",
    );
}

#[test]
fn damaged_inode_record_is_rebuilt_into_lost_and_found() {
    // Regression (issue 10, defect 3): fsck --repair destroyed a file whose inode record was
    // damaged: its entry and extents were dropped and its blocks freed and punched.
    let (t, a, _) = damaged_then_repaired(|_, a, _| Damage::CorruptInode(a), "checksum mismatch");
    with_store(t.path(), |s| {
        let lf = s.lookup(InodeNo::ROOT, b"lost+found").expect("lost+found");
        let a = s
            .lookup(lf.ino, format!("#{}", a.0).as_bytes())
            .expect("/lost+found/#a");
        assert_eq!((a.size, a.perm, a.uid), (256 * BS, 0o600, 0));
        let bytes = s.read_to_vec(a.ino, 0, a.size).expect("read");
        assert!(bytes.len() == 256 * BS as usize && bytes.iter().all(|&x| x == 1));
    });
}

#[test]
fn damaged_directory_record_is_left_uncorrected_and_its_files_kept() {
    // Regression (issue 10, defect 3): a directory whose record was damaged lost its entries,
    // and the files named only there were reclaimed; now it is left as it is (exit 4 before
    // and after --repair) and its files are linked into /lost+found.
    let t = tempfile::tempdir().expect("tmp");
    let (_, b) = build(t.path());
    let dir = with_store(t.path(), |s| {
        let dir = s.lookup(InodeNo::ROOT, b"dir").expect("dir").ino;
        s.inject_damage(&Damage::CorruptInode(dir)).expect("inject");
        dir
    });
    let o = cowfs(&["fsck", store_str(t.path())]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    let o = cowfs(&["fsck", "--repair", store_str(t.path())]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(text(&o).contains("not repaired:"), "{}", text(&o));
    assert!(text(&o).contains("left as it is"), "{}", text(&o));
    let o = cowfs(&["fsck", store_str(t.path())]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    let about_dir = format!("inode {}", dir.0);
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        if line.starts_with("Corrupt") || line.starts_with("DanglingDirent") {
            assert!(line.contains(&about_dir), "{line}");
        } else {
            assert!(
                line.contains("problems found"),
                "unexpected problem: {line}"
            );
        }
    }
    with_store(t.path(), |s| {
        let lf = s.lookup(InodeNo::ROOT, b"lost+found").expect("lost+found");
        let got = s
            .lookup(lf.ino, format!("#{}", b.0).as_bytes())
            .expect("b in lost+found");
        let bytes = s.read_to_vec(got.ino, 0, 256 * BS).expect("read b");
        assert_eq!(bytes.len(), 256 * BS as usize);
        assert!(bytes[..10 * BS as usize].iter().all(|&x| x == 1));
        assert!(bytes[10 * BS as usize..11 * BS as usize]
            .iter()
            .all(|&x| x == 2));
    });
}

#[test]
fn fsck_json_is_a_document_with_the_problems() {
    let t = tempfile::tempdir().expect("tmp");
    let (a, _) = build(t.path());
    with_store(t.path(), |s| {
        s.inject_damage(&Damage::WrongLinkCount(a, 7))
            .expect("inject")
    });
    let o = cowfs(&["fsck", "--json", store_str(t.path())]);
    assert_eq!(o.status.code(), Some(4));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["clean"], false);
    let probs = v["problems"].as_array().expect("problems");
    assert!(
        probs
            .iter()
            .any(|p| p["kind"] == "LinkCount" && p["ino"] == a.0 && p["path"] == "/a"),
        "{v}"
    );
}

#[test]
fn fsck_refuses_a_store_in_use_and_a_non_store() {
    let t = tempfile::tempdir().expect("tmp");
    build(t.path());
    let held = Store::open(
        t.path(),
        &OpenOptions {
            commit_interval: None,
            ..Default::default()
        },
    )
    .expect("open");
    let o = cowfs(&["fsck", store_str(t.path())]);
    assert_eq!(o.status.code(), Some(8), "{}", text(&o));
    assert!(text(&o).contains("in use"), "{}", text(&o));
    held.close().expect("close");
    let empty = tempfile::tempdir().expect("tmp");
    let o = cowfs(&["fsck", store_str(empty.path())]);
    assert_eq!(o.status.code(), Some(8), "{}", text(&o));
    assert!(text(&o).contains("not a cowfs store"), "{}", text(&o));
}

#[test]
fn damaged_metadata_is_reported_without_writing() {
    let t = tempfile::tempdir().expect("tmp");
    build(t.path());
    let meta = t.path().join(META_FILE);
    let len = std::fs::metadata(&meta).expect("meta").len() as usize;
    let pristine = std::fs::read(&meta).expect("read");
    let mut reported = 0;
    for i in 0..40 {
        let mut bytes = pristine.clone();
        let off = (i * 7919 + 4096) % len;
        bytes[off] ^= 0x5A;
        std::fs::write(&meta, &bytes).expect("write");
        let o = cowfs(&["fsck", store_str(t.path())]);
        let code = o.status.code().expect("exit code, not a signal");
        assert!(
            code == 0 || code == 4,
            "flip at {off}: exit {code}: {}",
            text(&o)
        );
        assert!(!text(&o).contains("panicked"), "{}", text(&o));
        if code == 4 {
            reported += 1;
        }
        assert_eq!(
            std::fs::read(&meta).expect("read"),
            bytes,
            "flip at {off}: fsck without --repair wrote"
        );
    }
    std::fs::write(&meta, &pristine).expect("restore");
    eprintln!("{reported} of 40 flips reported");
}

#[test]
fn du_figures_are_exact_for_reflinked_files() {
    let t = tempfile::tempdir().expect("tmp");
    build(t.path());
    let o = cowfs(&["du", "--json", store_str(t.path())]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let row = |p: &str| {
        rows.as_array()
            .expect("rows")
            .iter()
            .find(|r| r["path"] == p)
            .cloned()
            .expect(p)
    };
    // a: 256 blocks, 255 still shared with b, 1 (block 10) its own.
    assert_eq!(row("/a")["total"], 256 * BS);
    assert_eq!(row("/a")["exclusive"], BS);
    assert_eq!(row("/dir/b")["total"], 256 * BS);
    assert_eq!(row("/dir/b")["exclusive"], BS);
    assert_eq!(row("/dir/small")["total"], BS);
    assert_eq!(row("/dir/small")["exclusive"], BS);
    // Whole store: 513 blocks referenced from files, 255 of them shared (counted once).
    let root = row("");
    assert_eq!(root["total"], 513 * BS);
    assert_eq!(root["exclusive"], 3 * BS);
    assert_eq!(root["set_shared"], 255 * BS);
    let o = cowfs(&["du", "-s", store_str(t.path()), "/dir"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("1.00MiB"), "{}", text(&o));
}

#[test]
fn inspect_shows_summary_and_extent_refcounts() {
    let t = tempfile::tempdir().expect("tmp");
    build(t.path());
    let o = cowfs(&["inspect", store_str(t.path())]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    for field in [
        "format version",
        "block size",
        "generation",
        "referenced",
        "shared",
        "free in pool",
        "fragmentation",
    ] {
        assert!(text(&o).contains(field), "missing {field}: {}", text(&o));
    }
    let o = cowfs(&["inspect", "--json", store_str(t.path()), "/dir/b"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let ext = v["extents"].as_array().expect("extents");
    let shared: u64 = ext
        .iter()
        .filter(|e| e["refcount"] == 2)
        .map(|e| e["len"].as_u64().unwrap_or(0))
        .sum();
    let own: u64 = ext
        .iter()
        .filter(|e| e["refcount"] == 1)
        .map(|e| e["len"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!((shared, own), (255 * BS, BS), "{v}");
    let o = cowfs(&["inspect", store_str(t.path()), "/nope"]);
    assert_ne!(o.status.code(), Some(0));
}
