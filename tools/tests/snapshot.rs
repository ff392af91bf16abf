//! Real mounts: `cowfs snapshot` (issue 13). The copy is what `cp -a` makes (compared through
//! `find -printf`, `getfattr` dumps and content hashes), shares every block, diverges on writes,
//! refuses every change with EROFS when read-only, is refused whole for a caller who could not
//! `cp -a` the tree, survives a SIGKILL of the daemon as nothing or everything, keeps holes of
//! a single file, and `--delete` removes a tree; fsck is clean after each. On a terminal both
//! show the daemon's progress as a bar that counts up to an exact total; elsewhere nothing.

mod common;

use common::*;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn sh(script: &str, dir: &Path) -> Result<String, String> {
    let o = Command::new("sh")
        .args(["-ec", script])
        .current_dir(dir)
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(format!(
            "{script}: {}: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn snapshot(args: &[&str]) -> Result<String, String> {
    let mut all = vec!["snapshot"];
    all.extend_from_slice(args);
    run_ok(&all)
}

/// Run `cowfs ARGS` as nobody (uid and gid 65534, no supplementary groups).
fn as_nobody(args: &[&str]) -> std::io::Result<Output> {
    let mut all = vec![
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
        COWFS,
    ];
    all.extend_from_slice(args);
    Command::new("setpriv")
        .args(&all)
        .env("LC_ALL", "C")
        .output()
}

/// What `cp -a` must preserve, as text: per path its type, mode, owner, size, mtime with ns,
/// link count and symlink target (not atime: hashing the files updates it), then the xattr dump, then a hash of every regular file.
fn describe(dir: &Path) -> Result<String, String> {
    let find = sh(
        "find . -printf '%y %m %u %g %s %T@ %n %l %P\\n' | sort",
        dir,
    )?;
    let xattrs = sh("getfattr -R -h -d -m - -e hex . 2>/dev/null | sort", dir)?;
    let mut hashes = String::new();
    for line in sh("find . -type f | sort", dir)?.lines() {
        let h = hash_file(&dir.join(line)).map_err(|e| format!("{line}: {e}"))?;
        hashes.push_str(&format!("{line} {h:x}\n"));
    }
    Ok(format!("{find}\n{xattrs}\n{hashes}"))
}

/// A tree with every kind of inode, hard links, xattrs, an ACL, ns times and a sparse file.
fn populate(src: &Path) -> TestResult {
    fs::create_dir_all(src.join("a/b/c"))?;
    write_pattern(&src.join("a/data"), 1, 300_000)?;
    write_pattern(&src.join("a/b/small"), 2, 17)?;
    fs::hard_link(src.join("a/data"), src.join("a/b/c/data-link"))?;
    symlink("../data", src.join("a/b/rel"))?;
    symlink("/nonexistent/target", src.join("dangling"))?;
    sh(
        "mkfifo a/fifo && mknod a/b/tty c 4 1 && \
         truncate -s 1G sparse && printf x | dd of=sparse bs=1 seek=600000000 conv=notrunc status=none && \
         setfattr -n user.color -v blue a/data && setfattr -n trusted.t -v 1 a/b && \
         setfacl -m u:nobody:r-x a/b && setfacl -d -m g:daemon:rwx a && \
         chmod 4751 a/b/small && chown 1234:4321 a/b/small && \
         touch -h -d '2001-02-03 04:05:06.123456789' dangling && \
         touch -d '1999-12-31 23:59:59.987654321' a/b a/fifo a",
        src,
    )?;
    for i in 0..200 {
        fs::write(src.join(format!("a/b/c/f{i}")), format!("{i}"))?;
    }
    Ok(())
}

fn pool_bytes(m: &Mount) -> std::io::Result<u64> {
    Ok(fs::metadata(m.store.join("pool"))?.blocks() * 512)
}

#[test]
fn snapshot_is_what_cp_a_makes_and_copies_no_data() -> TestResult {
    let mut m = Mount::new(&[])?;
    let src = m.path("src");
    populate(&src)?;
    run_ok(&["sync", path_str(&m.mnt)])?;
    let pool = pool_bytes(&m)?;
    snapshot(&[path_str(&src), path_str(&m.path("dst"))])?;
    let (a, b) = (describe(&src)?, describe(&m.path("dst"))?);
    assert_eq!(a, b);
    assert!(
        a.contains("c 620 root root") || a.contains("c 644 root root"),
        "{a}"
    );
    assert!(a.contains("user.color"), "{a}");
    assert!(a.contains("system.posix_acl_default"), "{a}");
    // Inside the tree the hard link is one inode of two links, as cp -a makes it.
    let (d, l) = (
        fs::metadata(m.path("dst/a/data"))?,
        fs::metadata(m.path("dst/a/b/c/data-link"))?,
    );
    assert_eq!((d.ino(), d.nlink()), (l.ino(), 2));
    assert_ne!(d.ino(), fs::metadata(src.join("a/data"))?.ino());
    assert_eq!(pool_bytes(&m)?, pool, "no data block copied");
    fsck_clean(&mut m)
}

#[test]
fn writes_to_either_side_do_not_show_in_the_other() -> TestResult {
    let mut m = Mount::new(&[])?;
    let src = m.path("src");
    populate(&src)?;
    let dst = m.path("dst");
    snapshot(&[path_str(&src), path_str(&dst)])?;
    let before = describe(&dst)?;
    sh(
        "printf SRC | dd of=a/data bs=1 seek=5000 conv=notrunc status=none && \
         echo new > a/new && rm a/b/rel && chmod 600 a/b/small && setfattr -x user.color a/data",
        &src,
    )?;
    assert_eq!(
        describe(&dst)?,
        before,
        "the snapshot changed with its source"
    );
    let src_now = describe(&src)?;
    sh(
        "printf DST | dd of=a/data bs=1 seek=9000 conv=notrunc status=none && rm -r a/b/c",
        &dst,
    )?;
    assert_eq!(
        describe(&src)?,
        src_now,
        "the source changed with its snapshot"
    );
    check_pattern(&src.join("a/b/c/data-link"), 1, 300_000, &[(5000, b"SRC")])
        .map_err(|e| e.to_string())?;
    fsck_clean(&mut m)
}

#[test]
fn read_only_snapshot_refuses_every_change() -> TestResult {
    let mut m = Mount::new(&[])?;
    let src = m.path("src");
    populate(&src)?;
    let ro = m.path("ro");
    snapshot(&["--readonly", path_str(&src), path_str(&ro)])?;
    let before = describe(&ro)?;
    for op in [
        "echo x >> a/data",
        "echo x > a/new",
        "truncate -s 0 a/data",
        "touch a/data",
        "touch -d 2000-01-01 a/b",
        "chmod 600 a/data",
        "chown 1:1 a/data",
        "setfattr -n user.x -v 1 a/data",
        "setfattr -x user.color a/data",
        "setfacl -m u:nobody:rwx a",
        "rm a/data",
        "rmdir a/b/c",
        "mkdir a/d",
        "mknod a/p p",
        "ln -s x a/s",
        "ln a/data a/hard",
        "mv a/data a/moved",
        "mv a/data ../outside",
        "mv ../src/sparse a/in",
        "ln a/data ../outside-link",
        "chattr +A a/data",
    ] {
        let o = Command::new("sh")
            .args(["-c", op])
            .current_dir(&ro)
            .env("LC_ALL", "C")
            .output()?;
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("Read-only file system"),
            "{op}: {} {err}",
            o.status
        );
    }
    let o = Command::new("mv").arg(&ro).arg(m.path("moved")).output()?;
    assert!(!o.status.success(), "the snapshot itself cannot be renamed");
    assert_eq!(describe(&ro)?, before);
    // A snapshot of the read-only snapshot is writable again.
    let rw = m.path("rw");
    snapshot(&[path_str(&ro), path_str(&rw)])?;
    fs::write(rw.join("a/data"), b"mine")?;
    // Only the whole snapshot may go.
    assert!(fs::remove_dir_all(&ro).is_err());
    snapshot(&["--delete", path_str(&ro)])?;
    assert!(fs::symlink_metadata(&ro).is_err(), "gone at once");
    fsck_clean(&mut m)
}

#[test]
fn a_caller_who_could_not_cp_a_the_tree_is_refused_and_nothing_is_made() -> TestResult {
    let mut m = Mount::new(&["allow_other"])?;
    fs::set_permissions(m.dir.path(), fs::Permissions::from_mode(0o755))?;
    let src = m.path("src");
    fs::create_dir_all(src.join("open/secret"))?;
    fs::write(src.join("open/readable"), b"r")?;
    fs::write(src.join("open/secret/key"), b"k")?;
    fs::set_permissions(src.join("open/secret"), fs::Permissions::from_mode(0o700))?;
    let drop = m.path("drop");
    fs::create_dir(&drop)?;
    fs::set_permissions(&drop, fs::Permissions::from_mode(0o777))?;
    let refused = |args: &[&str]| -> Result<bool, Box<dyn std::error::Error>> {
        let o = as_nobody(args)?;
        Ok(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("ermission denied"))
    };
    // A directory nobody cannot read inside the tree.
    let copy = drop.join("copy");
    assert!(refused(&["snapshot", path_str(&src), path_str(&copy)])?);
    assert!(fs::symlink_metadata(&copy).is_err(), "nothing created");
    // A destination directory nobody may not write.
    let open = src.join("open/readable");
    assert!(refused(&[
        "snapshot",
        path_str(&open),
        path_str(&m.path("x"))
    ])?);
    // A file nobody cannot read.
    fs::set_permissions(&open, fs::Permissions::from_mode(0o600))?;
    assert!(refused(&["snapshot", path_str(&open), path_str(&copy)])?);
    fs::set_permissions(&open, fs::Permissions::from_mode(0o644))?;
    // What nobody may read it may snapshot; the copy is nobody's, as cp -a leaves it.
    fs::remove_file(src.join("open/secret/key"))?;
    fs::remove_dir(src.join("open/secret"))?;
    let o = as_nobody(&["snapshot", path_str(&src), path_str(&copy)])?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(fs::metadata(copy.join("open/readable"))?.uid(), 65534);
    // nobody may not remove a tree of root's.
    assert!(refused(&["snapshot", "--delete", path_str(&src)])?);
    assert!(src.join("open/readable").exists(), "nothing removed");
    fsck_clean(&mut m)
}

#[test]
fn single_file_snapshot_shares_blocks_and_keeps_holes() -> TestResult {
    let mut m = Mount::new(&[])?;
    let img = m.path("vm.img");
    sh(
        "truncate -s 2G vm.img && \
         for o in 1 300 5000; do dd if=/dev/urandom of=vm.img bs=64k count=3 seek=$o conv=notrunc status=none; done",
        &m.mnt,
    )?;
    run_ok(&["sync", path_str(&m.mnt)])?;
    let pool = pool_bytes(&m)?;
    let copy = m.path("vm.copy");
    snapshot(&[path_str(&img), path_str(&copy)])?;
    let (a, b) = (fs::metadata(&img)?, fs::metadata(&copy)?);
    assert_eq!((a.len(), a.blocks()), (b.len(), b.blocks()));
    let data_runs = |p: &Path| -> Result<Vec<i64>, Box<dyn std::error::Error>> {
        let f = fs::File::open(p)?;
        let mut out = Vec::new();
        let mut off = 0;
        while let Ok(d) = nix::unistd::lseek(&f, off, nix::unistd::Whence::SeekData) {
            out.push(d);
            off = nix::unistd::lseek(&f, d, nix::unistd::Whence::SeekHole)?;
        }
        Ok(out)
    };
    assert_eq!(data_runs(&copy)?, data_runs(&img)?);
    assert_eq!(data_runs(&copy)?.len(), 3);
    assert_eq!(hash_file(&copy)?, hash_file(&img)?);
    assert_eq!(pool_bytes(&m)?, pool);
    fsck_clean(&mut m)
}

#[test]
fn delete_removes_the_tree_at_once_and_frees_its_blocks() -> TestResult {
    let mut m = Mount::new(&[])?;
    let src = m.path("src");
    populate(&src)?;
    snapshot(&[path_str(&src), path_str(&m.path("dst"))])?;
    // Blocks only the snapshot holds go with it.
    write_pattern(&m.path("dst/a/only-here"), 9, 1 << 20)?;
    let _ = fs::metadata(m.path("dst/a/b/c/f1"))?; // in the kernel's dentry cache now
    snapshot(&["--delete", path_str(&m.path("dst"))])?;
    assert!(fs::symlink_metadata(m.path("dst")).is_err());
    assert!(fs::symlink_metadata(m.path("dst/a/b/c/f1")).is_err());
    assert!(src.join("a/b/c/f1").exists(), "the source stays");
    let o = cowfs(&["snapshot", "--delete", path_str(&m.mnt)])?;
    assert!(!o.status.success(), "the mount's root cannot be removed");
    fsck_clean(&mut m)
}

#[test]
fn the_new_name_shows_at_once_though_it_was_looked_up_before() -> TestResult {
    // Regression: a lookup miss is cached by the kernel as a negative entry, and the command
    // looks DST up before asking the daemon; the daemon made DST behind the kernel's back, so
    // `ls DST` failed with ENOENT for the entry TTL.
    let mut m = Mount::new(&[])?;
    let src = m.path("src");
    populate(&src)?;
    let dst = m.path("dst");
    assert!(
        fs::symlink_metadata(&dst).is_err(),
        "absent (now a negative entry)"
    );
    snapshot(&[path_str(&src), path_str(&dst)])?;
    assert!(
        fs::symlink_metadata(&dst)?.is_dir(),
        "visible right after the command"
    );
    assert!(dst.join("a/b/c/f1").exists());
    fsck_clean(&mut m)
}

/// A tree of `n` files in 100 directories, written through the mount.
fn many_files(dir: &Path, n: usize) -> TestResult {
    for d in 0..100 {
        fs::create_dir_all(dir.join(format!("d{d}")))?;
    }
    for i in 0..n {
        fs::write(dir.join(format!("d{}/f{i}", i % 100)), i.to_le_bytes())?;
    }
    Ok(())
}

#[test]
fn sigkill_during_a_snapshot_leaves_nothing_or_everything() -> TestResult {
    let mut m = Mount::new(&[])?;
    let src = m.path("src");
    many_files(&src, 20_000)?;
    run_ok(&["sync", path_str(&m.mnt)])?;
    let want = sh("find . -printf '%y %m %s %n %P\\n' | sort", &src)?;
    let mut outcomes = Vec::new();
    for (i, delay) in [5u64, 60, 150, 300, 3000].into_iter().enumerate() {
        let dst = m.path(&format!("dst{i}"));
        let mut child = Command::new(COWFS)
            .args(["snapshot", path_str(&src), path_str(&dst)])
            .spawn()?;
        std::thread::sleep(Duration::from_millis(delay));
        m.kill_daemon()?;
        let status = child.wait()?;
        eprintln!("snapshot killed after {delay} ms: {status}");
        lazy_umount(&m.mnt);
        let out = cowfs(&["fsck", path_str(&m.store)])?;
        assert!(
            out.status.success(),
            "fsck after SIGKILL at {delay} ms: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        m.mount(&[])?;
        let complete = match fs::symlink_metadata(&dst) {
            Err(_) => false,
            Ok(_) => {
                assert_eq!(
                    sh("find . -printf '%y %m %s %n %P\\n' | sort", &dst)?,
                    want,
                    "a snapshot that survived a SIGKILL at {delay} ms is incomplete"
                );
                true
            }
        };
        outcomes.push((delay, complete));
    }
    eprintln!("SIGKILL after ms -> snapshot complete: {outcomes:?}");
    assert_eq!(
        outcomes.last(),
        Some(&(3000, true)),
        "the last kill comes after the snapshot"
    );
    fsck_clean(&mut m)
}

/// `copies` snapshots of one directory of 1000 files under `dir` (`dir/c0` .. ): a big tree
/// made quickly. Returns the names below `dir`.
fn big_tree(dir: &Path, copies: usize) -> Result<u64, Box<dyn std::error::Error>> {
    let seed = dir.join("c0");
    fs::create_dir_all(&seed)?;
    for i in 0..1000 {
        fs::write(seed.join(format!("f{i}")), i.to_string())?;
    }
    for c in 1..copies {
        snapshot(&[path_str(&seed), path_str(&dir.join(format!("c{c}")))])?;
    }
    Ok(copies as u64 * 1001)
}

/// What `cowfs ARGS` writes to a terminal (its stderr is a pseudo-terminal's slave), its
/// stdout (a pipe) and whether it succeeded.
fn on_a_terminal(args: &[&str]) -> Result<(String, Vec<u8>, bool), Box<dyn std::error::Error>> {
    let pty = nix::pty::openpty(None, None)?;
    let mut master = fs::File::from(pty.master);
    let mut cmd = Command::new(COWFS);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(pty.slave));
    let child = cmd.spawn()?;
    // Our copy of the slave goes with `cmd`: the master reads EOF (EIO) once the child is gone.
    drop(cmd);
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match master.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // EIO: no slave open any more.
                Err(_) => break,
            }
        }
        seen
    });
    let out = child.wait_with_output()?;
    let term = reader.join().map_err(|_| "pty reader panicked")?;
    Ok((String::from_utf8(term)?, out.stdout, out.status.success()))
}

/// The frames a terminal was shown (each line drawn after a carriage return), without the
/// padding that overwrites a longer frame.
fn frames(term: &str) -> Vec<String> {
    term.split('\r')
        .map(|f| f.trim_end().to_string())
        .filter(|f| !f.is_empty())
        .collect()
}

/// `(phase, done, total)` of the frames of `what` that have a bar (`done/total`).
fn bar_counts(frames: &[String], what: &str) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    for f in frames {
        let mut words = f.split_whitespace();
        if words.next() != Some(what) {
            continue;
        }
        let Some(phase) = words.next() else { continue };
        let Some(counts) = words.find(|w| w.contains('/') && !w.ends_with("/s")) else {
            continue;
        };
        if let Some((d, t)) = counts.split_once('/') {
            if let (Ok(d), Ok(t)) = (d.parse(), t.parse()) {
                out.push((phase.to_string(), d, t));
            }
        }
    }
    out
}

/// The counts of `bars` never go back, more than one arrives while the operation runs, and
/// the last is the `done` frame at the total `want`.
fn assert_counts_up_to(bars: &[(String, u64, u64)], want: u64, term: &str) {
    assert!(
        bars.iter().all(|(_, _, t)| *t == want),
        "every total is {want}: {bars:?}"
    );
    assert!(
        bars.windows(2).all(|w| w[0].1 <= w[1].1),
        "counts go up: {bars:?}"
    );
    let running: std::collections::BTreeSet<u64> = bars
        .iter()
        .filter(|(p, d, _)| p != "done" && *d < want)
        .map(|b| b.1)
        .collect();
    assert!(
        running.len() >= 2,
        "progress arrives while the daemon works: {bars:?}\n{term:?}"
    );
    assert_eq!(
        bars.last(),
        Some(&("done".to_string(), want, want)),
        "ends at the total: {term:?}"
    );
}

#[test]
fn on_a_terminal_snapshot_and_delete_show_progress_up_to_the_total() -> TestResult {
    // Issue 13 (progress bar): `cowfs snapshot` showed only a spinner, the snapshot being one
    // ioctl; the daemon now publishes each batch and the command draws count/total, rate and
    // time left on a terminal, and erases the line at the end.
    let mut m = Mount::new(&[])?;
    let src = m.path("src");
    let names = big_tree(&src, 64)?;
    // SRC itself, then every name below it.
    let want = names + 1;
    let dst = m.path("dst");
    let t = Instant::now();
    let (term, stdout, ok) = on_a_terminal(&["snapshot", path_str(&src), path_str(&dst)])?;
    eprintln!(
        "snapshot of {want} entries on a terminal: {:?}",
        t.elapsed()
    );
    assert!(ok, "{term}");
    assert!(stdout.is_empty(), "stdout stays clean");
    let shown = frames(&term);
    assert!(
        shown
            .iter()
            .all(|f| f.len() < 80 && f.starts_with("snapshot ")),
        "{shown:#?}"
    );
    assert_counts_up_to(&bar_counts(&shown, "snapshot"), want, &term);
    assert!(
        shown.iter().any(|f| f.contains("/s ETA ")),
        "a rate and a time left: {shown:#?}"
    );
    assert!(
        term.ends_with('\r')
            && term
                .rsplit('\r')
                .nth(1)
                .is_some_and(|l| l.trim().is_empty()),
        "the line is erased at the end: {term:?}"
    );
    assert_eq!(
        sh("find . | wc -l", &dst)?.trim(),
        want.to_string(),
        "the copy is whole"
    );

    let (term, stdout, ok) = on_a_terminal(&["snapshot", "--delete", path_str(&dst)])?;
    assert!(ok, "{term}");
    assert!(stdout.is_empty());
    let shown = frames(&term);
    // Checking counts the names (no total yet), then removing has one: the names and DIR.
    assert!(
        shown
            .iter()
            .filter(|f| f.starts_with("delete checking"))
            .all(|f| f.ends_with(" entries") || f.contains(" entries ")),
        "{shown:#?}"
    );
    assert_counts_up_to(&bar_counts(&shown, "delete"), want, &term);
    assert!(fs::symlink_metadata(&dst).is_err());
    fsck_clean(&mut m)
}

#[test]
fn without_a_terminal_snapshot_prints_nothing() -> TestResult {
    // Issue 13 (progress bar): the bar is for terminals only; a pipe or a file gets no byte of
    // it, and the command stays silent on success.
    let mut m = Mount::new(&[])?;
    let src = m.path("src");
    let names = big_tree(&src, 20)?;
    let dst = m.path("dst");
    let out = Command::new(COWFS)
        .args(["snapshot", path_str(&src), path_str(&dst)])
        .stdin(Stdio::null())
        .output()?;
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
    assert_eq!(sh("find . | wc -l", &dst)?.trim(), (names + 1).to_string());
    let out = Command::new(COWFS)
        .args(["snapshot", "--delete", path_str(&dst)])
        .stdin(Stdio::null())
        .output()?;
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
    assert!(fs::symlink_metadata(&dst).is_err());
    fsck_clean(&mut m)
}

/// Timing on this machine (shared: numbers are noisy): a snapshot of 10,000 files against
/// `cp -a` of the same tree on the host's ext4, and of 100,000 files, and their removal.
/// `cargo test --release -p cowfs-tools --test snapshot -- --ignored --nocapture`.
#[test]
#[ignore]
fn timing() -> TestResult {
    let mut m = Mount::new(&[])?;
    for n in [10_000usize, 100_000] {
        let src = m.path(&format!("src{n}"));
        many_files(&src, n)?;
        run_ok(&["sync", path_str(&m.mnt)])?;
        let pool = pool_bytes(&m)?;
        let t = Instant::now();
        snapshot(&[path_str(&src), path_str(&m.path(&format!("snap{n}")))])?;
        let snap = t.elapsed();
        assert_eq!(pool_bytes(&m)?, pool, "the pool grew");
        let t = Instant::now();
        snapshot(&["--delete", path_str(&m.path(&format!("snap{n}")))])?;
        let del = t.elapsed();
        let host = tempfile::tempdir_in(m.dir.path())?;
        let hsrc = host.path().join("src");
        many_files(&hsrc, n)?;
        sh("sync", host.path())?;
        let t = Instant::now();
        sh("cp -a src copy", host.path())?;
        let cp = t.elapsed();
        eprintln!(
            "{n} files: cowfs snapshot {snap:?}, delete {del:?}; ext4 cp -a {cp:?} (ratio {:.3})",
            snap.as_secs_f64() / cp.as_secs_f64()
        );
    }
    fsck_clean(&mut m)
}
