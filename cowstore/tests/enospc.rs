//! A store on a tiny host filesystem: filling it gives ENOSPC (never EIO or a wedged store),
//! deleting makes room again through a normal commit, and the store checks clean after.
//! Needs root (it mounts a tmpfs), as CI has.

#[macro_use]
mod engines;

use cowstore::*;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("tmp").keep();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then_some(Tmpfs(dir))
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

const ME: Caller = Caller { uid: 0, gid: 0 };

fn filling_the_host_gives_enospc_and_deleting_recovers() {
    let Some(fs) = Tmpfs::mount("24m") else {
        assert!(
            !nix_is_root(),
            "mounting a tmpfs failed although we are root"
        );
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let dir = fs.path().join("store");
    Store::mkfs(&dir, &engines::mkfs_opts(4096)).expect("mkfs");
    let s = Store::open(
        &dir,
        &OpenOptions {
            commit_interval: None,
            ..Default::default()
        },
    )
    .expect("open");
    let reg = NewInode::regular(0o644);
    let chunk = vec![0x5Au8; 256 << 10];
    let mut files = Vec::new();
    let mut hit = None;
    'fill: for i in 0..1000 {
        let f = match s.create(InodeNo::ROOT, format!("f{i}").as_bytes(), &reg, ME) {
            Ok(a) => a.ino,
            Err(e) => {
                hit = Some(e);
                break;
            }
        };
        files.push(f);
        for k in 0..8u64 {
            if let Err(e) = s.write(f, k * chunk.len() as u64, &chunk) {
                hit = Some(e);
                break 'fill;
            }
        }
        if let Err(e) = s.commit() {
            hit = Some(e);
            break;
        }
    }
    let err = hit.expect("a 24 MiB filesystem must fill up");
    assert!(
        matches!(err, Error::NoSpace),
        "expected ENOSPC, got {err:?} ({})",
        err.errno()
    );
    // Now grow the metadata itself (no data blocks) until a commit of the B-tree meets the full
    // disk: that must also be ENOSPC, and must not wedge the store.
    let d = s
        .mkdir(InodeNo::ROOT, b"meta", 0o755, ME)
        .expect("mkdir on a full disk")
        .ino;
    let value = vec![7u8; 4000];
    let mut meta_err = None;
    'grow: for batch in 0..2000 {
        for j in 0..50 {
            let name = format!("m{batch}-{j}");
            let r = s
                .create(d, name.as_bytes(), &reg, ME)
                .and_then(|a| s.setxattr(a.ino, b"user.pad", &value, 0));
            if let Err(e) = r {
                meta_err = Some(e);
                break 'grow;
            }
        }
        if let Err(e) = s.commit() {
            meta_err = Some(e);
            break;
        }
    }
    let err = meta_err.expect("metadata growth must meet the full disk");
    assert!(
        matches!(err, Error::NoSpace),
        "metadata ENOSPC must be ENOSPC, got {err:?}"
    );
    // Free space: remove the metadata directory's files and half the data files.
    let names: Vec<Vec<u8>> = s
        .readdir(d, 0, usize::MAX)
        .expect("readdir")
        .into_iter()
        .map(|e| e.name)
        .collect();
    for n in names
        .iter()
        .filter(|n| n.as_slice() != b"." && n.as_slice() != b"..")
    {
        s.unlink(d, n).expect("unlink metadata file on a full disk");
    }
    // Deleting works and commits even though the disk is full.
    let _ = s.commit();
    for i in 0..files.len() / 2 {
        s.unlink(InodeNo::ROOT, format!("f{i}").as_bytes())
            .expect("unlink on a full disk");
    }
    s.commit().expect("commit after deleting");
    s.commit().expect("second commit restores the reserve");
    // There is room again.
    let g = s
        .create(InodeNo::ROOT, b"again", &reg, ME)
        .expect("create again")
        .ino;
    s.write(g, 0, &chunk).expect("write again");
    s.commit().expect("commit again");
    let report = s.check().expect("check");
    assert!(report.is_clean(), "{:#?}", report.problems);
    s.close().expect("close");
    let s = Store::open(
        &dir,
        &OpenOptions {
            commit_interval: None,
            ..Default::default()
        },
    )
    .expect("reopen");
    assert_eq!(
        s.read_to_vec(g, 0, chunk.len() as u64).expect("read"),
        chunk
    );
    assert!(s.check().expect("check").is_clean());
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|st| {
            st.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn fallocate_beyond_the_host_is_enospc() {
    // Regression: fallocate only punched the new pool blocks, reserving nothing on the host,
    // so `fallocate -l 1G` succeeded on a 64 MiB host and the writes into the "preallocated"
    // range then failed with ENOSPC.
    let Some(fs) = Tmpfs::mount("24m") else {
        assert!(
            !nix_is_root(),
            "mounting a tmpfs failed although we are root"
        );
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let dir = fs.path().join("store");
    Store::mkfs(&dir, &engines::mkfs_opts(4096)).expect("mkfs");
    let s = Store::open(&dir, &OpenOptions::default()).expect("open");
    let reg = NewInode::regular(0o644);
    let f = s.create(InodeNo::ROOT, b"f", &reg, ME).expect("create").ino;
    let r = s.fallocate(f, 0, 64 << 20, FallocMode::Allocate { keep_size: false });
    assert!(matches!(r, Err(Error::NoSpace)), "{r:?}");
    s.fallocate(f, 0, 4 << 20, FallocMode::Allocate { keep_size: false })
        .expect("a fallocate that fits");
    s.write(f, 0, &vec![7u8; 4 << 20])
        .expect("writes into the preallocated range");
    s.commit().expect("commit");
    assert!(s.check().expect("check").is_clean());
    s.close().expect("close");
}

per_engine!(
    filling_the_host_gives_enospc_and_deleting_recovers,
    fallocate_beyond_the_host_is_enospc,
);
