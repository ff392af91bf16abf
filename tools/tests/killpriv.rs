//! Real mounts: what write, truncate, chown and copy_file_range take from a file's privileges
//! (setuid/setgid bits, `security.capability`) now that cowfs negotiates
//! FUSE_HANDLE_KILLPRIV_V2 and the kernel leaves that to the daemon; and that writes no longer
//! cost a GETXATTR each; and append-only files under the writeback cache. Every case runs with
//! and without the writeback cache. Other users are
//! `nobody` through `setpriv`; root without CAP_FSETID through `capsh --drop`.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

const MODES: [&str; 2] = ["no_writeback_cache", "writeback_cache"];

fn checked(out: std::io::Result<Output>, what: &str) -> Result<String, String> {
    let o = out.map_err(|e| format!("{what}: {e}"))?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(format!(
            "{what}: {}: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

/// `sh -c script` as root, with `$1` the path.
fn root_sh(script: &str, p: &Path) -> Result<String, String> {
    let out = Command::new("sh")
        .args(["-c", script, "sh", path_str(p)])
        .output();
    checked(out, script)
}

/// `sh -c script` as nobody (uid 65534, only group nogroup), with `$1` the path.
fn nobody_sh(script: &str, p: &Path) -> Result<String, String> {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(["sh", "-c", script, "sh", path_str(p)])
        .output();
    checked(out, script)
}

/// `sh -c script` as root without CAP_FSETID, with `$1` the path.
fn root_without_fsetid(script: &str, p: &Path) -> Result<String, String> {
    let out = Command::new("capsh")
        .args(["--drop=cap_fsetid", "--", "-c", script, "sh", path_str(p)])
        .output();
    checked(out, script)
}

/// The mode as `stat -c %a` shows it: the kernel's cached mode, which exec checks.
fn mode(p: &Path) -> Result<String, String> {
    Ok(root_sh("stat -c %a \"$1\"", p)?.trim().to_string())
}

/// A mount nobody can reach (`allow_other`; the test's temp dir opened to others), with `opt`.
fn shared_mount(opt: &str) -> Result<Mount, Box<dyn std::error::Error>> {
    let m = Mount::new(&["allow_other", opt])?;
    fs::set_permissions(m.dir.path(), fs::Permissions::from_mode(0o755))?;
    Ok(m)
}

/// A fresh file `name` holding 8 KiB, with mode `perm`, owned by root:root.
fn file(m: &Mount, name: &str, perm: &str) -> Result<std::path::PathBuf, String> {
    let f = m.path(name);
    fs::write(&f, vec![7u8; 8192]).map_err(|e| e.to_string())?;
    root_sh(&format!("chmod {perm} \"$1\""), &f)?;
    Ok(f)
}

/// Overwrite one byte in place (no truncation), then make it reach the daemon.
const WRITE: &str = "printf x 1<>\"$1\" && sync \"$1\"";

// Regression (issue 12, killpriv): under FUSE_HANDLE_KILLPRIV_V2 the kernel no longer clears
// setuid/setgid on write; the daemon must, exactly when the writer lacks CAP_FSETID.
#[test]
fn write_drops_setuid_unless_the_writer_has_cap_fsetid() -> TestResult {
    for opt in MODES {
        let m = shared_mount(opt)?;
        let f = file(&m, "suid", "6777")?;
        root_sh(WRITE, &f)?;
        assert_eq!(
            mode(&f)?,
            "6777",
            "{opt}: root (CAP_FSETID) keeps both bits"
        );
        nobody_sh(WRITE, &f)?;
        assert_eq!(
            mode(&f)?,
            "777",
            "{opt}: a write by nobody drops setuid and setgid"
        );

        let f = file(&m, "suid2", "4755")?;
        root_without_fsetid(WRITE, &f)?;
        assert_eq!(
            mode(&f)?,
            "755",
            "{opt}: root without CAP_FSETID drops setuid"
        );

        // Not group-executable: setgid goes only for a writer outside the group (ext4).
        let f = file(&m, "sgid", "2666")?;
        nobody_sh(WRITE, &f)?;
        assert_eq!(
            mode(&f)?,
            "666",
            "{opt}: setgid of a 2666 file, written by a non-member"
        );
        let f = file(&m, "sgid2", "2666")?;
        root_sh("chgrp nogroup \"$1\"", &f)?;
        root_sh("chmod 2666 \"$1\"", &f)?;
        nobody_sh(WRITE, &f)?;
        assert_eq!(mode(&f)?, "2666", "{opt}: a member of the group keeps it");
    }
    Ok(())
}

// Regression (issue 12, killpriv): fuser 0.18 drops FATTR_KILL_SUIDGID, so the daemon infers
// it: a truncate by a caller without CAP_FSETID, and every chown of a non-directory.
#[test]
fn truncate_and_chown_drop_setuid_as_on_ext4() -> TestResult {
    for opt in MODES {
        let m = shared_mount(opt)?;
        let f = file(&m, "t", "6777")?;
        root_sh("truncate -s 100 \"$1\"", &f)?;
        assert_eq!(mode(&f)?, "6777", "{opt}: truncate by root");
        nobody_sh("truncate -s 10 \"$1\"", &f)?;
        assert_eq!(mode(&f)?, "777", "{opt}: truncate by nobody");

        let f = file(&m, "otrunc", "4777")?;
        nobody_sh(": > \"$1\"", &f)?;
        assert_eq!(mode(&f)?, "777", "{opt}: open(O_TRUNC) by nobody");
        assert_eq!(fs::metadata(&f)?.len(), 0);

        let f = file(&m, "c", "6755")?;
        root_sh("chown nobody \"$1\"", &f)?;
        assert_eq!(
            mode(&f)?,
            "755",
            "{opt}: chown by root drops setuid, g+x setgid"
        );
        let f = file(&m, "c2", "6745")?;
        root_sh("chown nobody \"$1\"", &f)?;
        assert_eq!(mode(&f)?, "2745", "{opt}: root keeps a setgid without g+x");
        root_sh("chmod 6745 \"$1\"", &f)?;
        root_sh("chown -- -1 \"$1\"", &f).ok();
        root_sh("chown :nogroup \"$1\"", &f)?;
        assert_eq!(mode(&f)?, "2745", "{opt}: chgrp by root");
    }
    Ok(())
}

// Regression (issue 12, killpriv): copy_file_range strips no privileges in the kernel under
// V2 and its request carries no flag; the daemon drops them as for a write.
#[test]
fn copy_file_range_by_nobody_drops_setuid() -> TestResult {
    for opt in MODES {
        let m = shared_mount(opt)?;
        let src = file(&m, "src", "644")?;
        let dst = file(&m, "dst", "6777")?;
        let script = format!(
            "python3 -c 'import os,sys; s=os.open(\"{}\", os.O_RDONLY); \
             d=os.open(sys.argv[1], os.O_WRONLY); print(os.copy_file_range(s, d, 4096, 0, 0))' \"$1\"",
            path_str(&src)
        );
        let n = nobody_sh(&script, &dst)?;
        assert_eq!(n.trim(), "4096", "{opt}");
        assert_eq!(mode(&dst)?, "777", "{opt}: copy_file_range by nobody");
    }
    Ok(())
}

fn getcap(p: &Path) -> Result<String, String> {
    Ok(root_sh("getcap \"$1\"", p)?.trim().to_string())
}

// Regression (issue 12, killpriv): file capabilities go on write, truncate and chown, whoever
// makes the change (cap_inode_killpriv), now also when the kernel no longer asks first.
#[test]
fn write_truncate_and_chown_remove_file_capabilities() -> TestResult {
    for opt in MODES {
        let m = shared_mount(opt)?;
        for (name, change) in [
            ("w", WRITE),
            ("t", "truncate -s 1 \"$1\""),
            ("c", "chown nobody \"$1\""),
        ] {
            let f = file(&m, name, "755")?;
            root_sh("setcap cap_net_raw+ep \"$1\"", &f)?;
            assert!(getcap(&f)?.contains("cap_net_raw"), "{opt} {name}");
            root_sh(change, &f)?;
            assert_eq!(
                getcap(&f)?,
                "",
                "{opt}: {change} removes security.capability"
            );
        }
        // Set again after the kernel marked the inode checked: the next write still removes it.
        let f = m.path("w");
        root_sh("setcap cap_net_raw+ep \"$1\"", &f)?;
        root_sh(WRITE, &f)?;
        assert_eq!(getcap(&f)?, "", "{opt}: setcap then write");
    }
    Ok(())
}

// Regression (issue 12, round trips): each write(2) cost a WRITE and a GETXATTR of
// security.capability; with FUSE_HANDLE_KILLPRIV_V2 the kernel asks once per inode.
#[test]
fn writes_cost_no_getxattr() -> TestResult {
    for opt in MODES {
        let m = shared_mount(opt)?;
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(m.path("f"))?;
        f.write_all_at(b"first", 0)?;
        let (gx, wr) = (m.counter("getxattrs")?, m.counter("writes")?);
        const N: u64 = 200;
        for i in 0..N {
            f.write_all_at(&[i as u8; 4096], (i * 7919 % 512) * 4096)?;
        }
        f.sync_all()?;
        let writes = m.counter("writes")? - wr;
        assert!(writes >= 1, "{opt}: the writes reached the daemon");
        assert_eq!(
            m.counter("getxattrs")? - gx,
            0,
            "{opt}: {N} writes, no GETXATTR"
        );
    }
    Ok(())
}

// Regression (issue 12, writeback_cache): the kernel wrote an append back as a rewrite of the
// last page, which append-only refused (EPERM at fsync, the appended bytes lost); writers of an
// append-only file now write through (FOPEN_DIRECT_IO).
#[test]
fn append_only_file_keeps_appends_under_the_writeback_cache() -> TestResult {
    for opt in MODES {
        let mut m = Mount::new(&[opt])?;
        let f = m.path("log");
        fs::write(&f, b"abc")?;
        root_sh("chattr +a \"$1\"", &f)?;
        for i in 0..3 {
            root_sh(&format!("echo line{i} >> \"$1\""), &f)?;
        }
        root_sh("sync \"$1\"", &f)?;
        m.remount(&[opt])?;
        assert_eq!(fs::read(&f)?, b"abcline0\nline1\nline2\n", "{opt}");
    }
    Ok(())
}
