//! cowfs as mount(8)'s helper `mount.fuse.cowfs`: `mount -t fuse.cowfs`, fstab lines, remount,
//! and unmounting by the store. Each test runs mount(8) in a private mount namespace whose /sbin
//! is an empty directory of the test, where the README's one command installs the helper: the
//! host's /sbin is never written, tests run in parallel, and whatever a failing test leaves
//! mounted goes with the namespace when its processes are killed.

mod common;

use common::*;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// A private mount namespace holding the test's /sbin, and a store to mount in it.
struct Ns {
    /// The store and mountpoint (its own guard has nothing mounted in our namespace).
    m: Mount,
    /// `sleep` in the namespace, which keeps it alive.
    holder: Child,
    /// `/proc/PID/ns/mnt` of the holder, as readlink shows it.
    ns_id: PathBuf,
}

impl Ns {
    fn new() -> Result<Ns, Box<dyn std::error::Error>> {
        let m = Mount::unmounted(None)?;
        // `nobody` must reach the mountpoint for the setuid check.
        fs::set_permissions(m.dir.path(), fs::Permissions::from_mode(0o755))?;
        let sbin = m.dir.path().join("sbin");
        fs::create_dir(&sbin)?;
        // On Debian /sbin is a symlink to usr/sbin: cover where it leads.
        let real_sbin = Path::new("/sbin").canonicalize()?;
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "mount --bind '{}' '{}' && echo ready && exec sleep 600",
                sbin.display(),
                real_sbin.display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        if let Some(out) = holder.stdout.take() {
            BufReader::new(out).read_line(&mut line)?;
        }
        let ns_id = fs::read_link(format!("/proc/{}/ns/mnt", holder.id()));
        let ns = match ns_id {
            Ok(ns_id) if line.trim() == "ready" => Ns { m, holder, ns_id },
            other => {
                let _ = holder.kill();
                let _ = holder.wait();
                return Err(format!("no private namespace ({line:?}, {other:?})").into());
            }
        };
        Ok(ns)
    }

    fn dir(&self) -> &Path {
        self.m.dir.path()
    }

    fn store(&self) -> &str {
        path_str(&self.m.store)
    }

    fn mnt(&self) -> &str {
        path_str(&self.m.mnt)
    }

    /// `args` run in the namespace (where the working directory is /: entering a mount
    /// namespace moves there), with the built cowfs first on PATH and a utab of its own
    /// (mount(8) records fstab-only options there).
    fn command(&self, args: &[&str]) -> Command {
        let bin = Path::new(COWFS).parent().unwrap_or(Path::new("/"));
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut c = Command::new("nsenter");
        c.arg("--target")
            .arg(self.holder.id().to_string())
            .arg("--mount")
            .arg("--")
            .args(args)
            .env("PATH", path)
            .env("LIBMOUNT_UTAB", self.dir().join("utab"))
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> std::io::Result<Output> {
        self.command(args).output()
    }

    fn ok(&self, args: &[&str]) -> Result<String, String> {
        let out = self.run(args).map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "{args:?} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn sh(&self, script: &str) -> Result<String, String> {
        self.ok(&["sh", "-c", script])
    }

    /// The namespace's mountinfo line of the mount at our mountpoint, split in fields.
    fn mount_line(&self) -> Option<Vec<String>> {
        let info = fs::read_to_string(format!("/proc/{}/mountinfo", self.holder.id())).ok()?;
        info.lines()
            .map(|l| l.split(' ').map(str::to_string).collect::<Vec<_>>())
            .rfind(|f| f.get(4).map(String::as_str) == Some(self.mnt()))
    }

    /// The per-mount flags of the mount at our mountpoint (`rw,nosuid,nodev,relatime`).
    fn flags(&self) -> Result<Vec<String>, String> {
        let line = self.mount_line().ok_or("nothing mounted")?;
        let sep = line.iter().position(|f| f == "-").ok_or("bad line")?;
        if line.get(sep + 1).map(String::as_str) != Some("fuse.cowfs")
            || line.get(sep + 2).map(String::as_str) != Some(self.store())
        {
            return Err(format!("not our cowfs mount: {line:?}"));
        }
        Ok(line[5].split(',').map(str::to_string).collect())
    }

    fn daemon_pid(&self) -> Result<u32, Box<dyn std::error::Error>> {
        let out = self.ok(&[COWFS, "stats", "--json", self.mnt()])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        Ok(v["pid"].as_u64().ok_or("no pid")? as u32)
    }

    fn commits(&self) -> Result<u64, Box<dyn std::error::Error>> {
        let out = self.ok(&[COWFS, "stats", "--json", self.mnt()])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        Ok(v["commits"].as_u64().ok_or("no commits")?)
    }

    /// Wait for the daemon to exit after an unmount.
    fn gone(&self, pid: u32) -> TestResult {
        reap(pid, Duration::from_secs(10))?;
        assert!(self.mount_line().is_none(), "still mounted");
        Ok(())
    }

    /// Install the helper with the command the README gives.
    fn install_helper(&self) -> TestResult {
        let readme = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))?;
        let cmd = r#"ln -s "$(command -v cowfs)" /sbin/mount.fuse.cowfs"#;
        assert!(readme.contains(cmd), "README gives `{cmd}`");
        self.sh(cmd)?;
        let link = fs::read_link(self.dir().join("sbin/mount.fuse.cowfs"))?;
        assert_eq!(link, Path::new(COWFS));
        Ok(())
    }
}

impl Drop for Ns {
    /// Kill every process in the namespace (the daemons, and the holder last); the namespace and
    /// its mounts end with them.
    fn drop(&mut self) {
        let mut pids = Vec::new();
        if let Ok(dir) = fs::read_dir("/proc") {
            for e in dir.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                if pid != self.holder.id()
                    && fs::read_link(format!("/proc/{pid}/ns/mnt")).ok().as_ref()
                        == Some(&self.ns_id)
                {
                    pids.push(pid);
                }
            }
        }
        for &pid in &pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        for pid in pids {
            let _ = reap(pid, Duration::from_secs(10));
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

fn has(flags: &[String], f: &str) -> bool {
    flags.iter().any(|x| x == f)
}

#[test]
fn mount_t_fuse_cowfs_keeps_suid_and_dev_and_unmounts_by_store() -> TestResult {
    // Regression (issue 13): through the symlinked helper, `mount -t fuse.cowfs -o suid,dev`
    // mounted nosuid,nodev (mount(8) takes out suid and dev, its defaults, before calling the
    // helper), and the mount could not be unmounted by its store.
    let ns = Ns::new()?;
    ns.install_helper()?;
    let (store, mnt) = (ns.store(), ns.mnt());
    ns.ok(&[
        "mount",
        "-t",
        "fuse.cowfs",
        store,
        mnt,
        "-o",
        "suid,dev,allow_other",
    ])?;
    let flags = ns.flags()?;
    assert!(!has(&flags, "nosuid") && !has(&flags, "nodev"), "{flags:?}");
    // suid: a setuid-root copy of id(1) run by nobody says 0; dev: a device node works.
    let script = format!(
        "cp /usr/bin/id {mnt}/id && chmod 4755 {mnt}/id && mknod {mnt}/null c 1 3 && \
         echo x > {mnt}/null && setpriv --reuid=65534 --regid=65534 --clear-groups {mnt}/id -u"
    );
    assert_eq!(ns.sh(&script)?.trim(), "0", "the setuid bit took effect");
    let pid = ns.daemon_pid()?;
    ns.ok(&[COWFS, "umount", store])?;
    ns.gone(pid)?;

    // nosuid,nodev as asked.
    ns.ok(&[
        "mount",
        "-t",
        "fuse.cowfs",
        store,
        mnt,
        "-o",
        "nosuid,nodev,allow_other",
    ])?;
    let flags = ns.flags()?;
    assert!(has(&flags, "nosuid") && has(&flags, "nodev"), "{flags:?}");
    let id = format!("setpriv --reuid=65534 --regid=65534 --clear-groups {mnt}/id -u");
    assert_eq!(ns.sh(&id)?.trim(), "65534", "setuid ignored on nosuid");
    assert!(
        ns.sh(&format!("echo x > {mnt}/null")).is_err(),
        "a device node on nodev"
    );
    // umount(8) by the store, given as a relative path (an absolute path to a directory it
    // takes for a mountpoint before it looks at sources, as for any filesystem).
    let pid = ns.daemon_pid()?;
    ns.sh(&format!("cd '{}' && umount store", ns.dir().display()))?;
    ns.gone(pid)?;

    // No options at all: mount(8)'s defaults, as for every filesystem it mounts.
    ns.ok(&["mount", "-t", "fuse.cowfs", store, mnt])?;
    let flags = ns.flags()?;
    assert!(!has(&flags, "nosuid") && !has(&flags, "nodev"), "{flags:?}");
    let pid = ns.daemon_pid()?;
    ns.ok(&["umount", mnt])?;
    ns.gone(pid)?;
    Ok(())
}

#[test]
fn mount_helper_honours_fake_and_sloppy() -> TestResult {
    // Regression (issue 13): mount(8)'s -f (fake) mounted for real; -s (sloppy) was dropped.
    let ns = Ns::new()?;
    ns.install_helper()?;
    let (store, mnt) = (ns.store(), ns.mnt());
    ns.ok(&["mount", "-f", "-t", "fuse.cowfs", store, mnt])?;
    assert!(ns.mount_line().is_none(), "-f mounts nothing");
    let out = ns.run(&["mount", "-t", "fuse.cowfs", store, mnt, "-o", "frobnicate"])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown mount option \"frobnicate\""), "{err}");
    assert!(ns.mount_line().is_none());
    ns.ok(&[
        "mount",
        "-s",
        "-t",
        "fuse.cowfs",
        store,
        mnt,
        "-o",
        "frobnicate",
    ])?;
    ns.flags()?;
    let pid = ns.daemon_pid()?;
    ns.ok(&["umount", mnt])?;
    ns.gone(pid)?;
    Ok(())
}

#[test]
fn fstab_line_mounts_and_remount_changes_the_live_mount() -> TestResult {
    // Regression (issue 13): `mount -o remount,...` was refused by the helper ("unknown mount
    // option remount"), so a mount could not go read-only and back.
    let ns = Ns::new()?;
    ns.install_helper()?;
    let (store, mnt) = (ns.store(), ns.mnt());
    let fstab = ns.dir().join("fstab");
    fs::write(
        &fstab,
        format!("# cowfs\n{store} {mnt} fuse.cowfs noauto,suid,dev,commit=0,x-cowfs.test 0 0\n"),
    )?;
    let fstab = path_str(&fstab);
    ns.ok(&["mount", "-T", fstab, mnt])?;
    let flags = ns.flags()?;
    assert!(
        has(&flags, "rw") && !has(&flags, "nosuid") && !has(&flags, "nodev"),
        "{flags:?}"
    );
    // commit=0: nothing but fsync, `cowfs sync`, unmount (and going read-only) commits.
    ns.sh(&format!("echo before > {mnt}/f"))?;
    let commits = ns.commits()?;

    ns.ok(&["mount", "-o", "remount,ro", mnt])?;
    let flags = ns.flags()?;
    assert!(has(&flags, "ro") && !has(&flags, "nosuid"), "{flags:?}");
    let out = ns.run(&["touch", &format!("{mnt}/g")])?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Read-only file system"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(ns.commits()? > commits, "going read-only committed");
    assert_eq!(ns.sh(&format!("cat {mnt}/f"))?, "before\n");

    // Back to read-write, and other flags change as asked; the others stay.
    ns.ok(&["mount", "-o", "remount,rw,nosuid,noexec", mnt])?;
    let flags = ns.flags()?;
    assert!(
        has(&flags, "rw")
            && has(&flags, "nosuid")
            && has(&flags, "noexec")
            && !has(&flags, "nodev"),
        "{flags:?}"
    );
    ns.sh(&format!("echo after >> {mnt}/f"))?;
    // By the fstab line: its options again (suid, dev, no noexec).
    ns.ok(&["mount", "-T", fstab, "-o", "remount", mnt])?;
    let flags = ns.flags()?;
    assert!(
        !has(&flags, "nosuid") && !has(&flags, "noexec"),
        "{flags:?}"
    );

    // A file open for writing keeps the mount from going read-only, as on any filesystem.
    let mut writer = ns
        .command(&[
            "sh",
            "-c",
            &format!("exec 3>>{mnt}/f; echo open; exec sleep 60"),
        ])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    if let Some(out) = writer.stdout.take() {
        BufReader::new(out).read_line(&mut line)?;
    }
    let busy = ns.run(&["mount", "-o", "remount,ro", mnt]);
    let _ = writer.kill();
    let _ = writer.wait();
    let busy = busy?;
    assert_eq!(line.trim(), "open");
    assert!(
        !busy.status.success(),
        "remount,ro with a file open for writing"
    );
    let err = String::from_utf8_lossy(&busy.stderr);
    assert!(err.contains("busy"), "{err}");
    assert!(has(&ns.flags()?, "rw"));

    let pid = ns.daemon_pid()?;
    ns.ok(&["umount", mnt])?;
    ns.gone(pid)?;
    ns.ok(&["mount", "--fstab", fstab, store])?;
    assert_eq!(ns.sh(&format!("cat {mnt}/f"))?, "before\nafter\n");
    let pid = ns.daemon_pid()?;
    ns.ok(&["umount", mnt])?;
    ns.gone(pid)?;
    Ok(())
}

#[test]
fn remount_rw_of_a_store_opened_read_only_is_refused() -> TestResult {
    // Regression (issue 13): with `-o ro` the daemon opens the store read-only; a remount to
    // read-write must say so instead of letting every write fail.
    let ns = Ns::new()?;
    ns.install_helper()?;
    let (store, mnt) = (ns.store(), ns.mnt());
    ns.ok(&["mount", "-t", "fuse.cowfs", store, mnt, "-o", "ro"])?;
    assert!(has(&ns.flags()?, "ro"));
    let out = ns.run(&["mount", "-o", "remount,rw", mnt])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("opened the store read-only"), "{err}");
    assert!(has(&ns.flags()?, "ro"), "still read-only");
    let pid = ns.daemon_pid()?;
    ns.ok(&["umount", mnt])?;
    ns.gone(pid)?;
    Ok(())
}

#[test]
fn remount_ro_changes_nothing_in_the_store_and_rw_brings_access_times_back() -> TestResult {
    // Regression (issue 13): after `mount -o remount,ro` the daemon still recorded access times
    // of reads and the periodic commit wrote them: the store of a read-only mount kept changing.
    let ns = Ns::new()?;
    ns.install_helper()?;
    let (store, mnt) = (ns.store(), ns.mnt());
    // Commit every second; no attribute cache, so stat always asks the daemon.
    ns.ok(&[
        "mount",
        "-t",
        "fuse.cowfs",
        store,
        mnt,
        "-o",
        "commit=1,ttl=0",
    ])?;
    let f = format!("{mnt}/f");
    ns.sh(&format!("echo data > {f}"))?;
    let atime = || ns.ok(&["stat", "-c", "%x", &f]);
    let created = atime()?;
    let generation = || -> Result<u64, Box<dyn std::error::Error>> {
        let out = ns.ok(&[COWFS, "inspect", store, "--json"])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        Ok(v["generation"].as_u64().ok_or("no generation")?)
    };
    let read_only = || -> Result<bool, Box<dyn std::error::Error>> {
        let out = ns.ok(&[COWFS, "stats", "--json", mnt])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        Ok(v["read_only"].as_bool().ok_or("no read_only")?)
    };
    let meta = ns.m.store.join("meta.redb");
    assert!(!read_only()?);

    ns.ok(&["mount", "-o", "remount,ro", mnt])?;
    assert!(read_only()?, "the daemon is read-only too");
    let (commits, generation_ro, meta_hash) = (ns.commits()?, generation()?, hash_file(&meta)?);
    // Reads that relatime records (the first since the file changed), a listing, a stat.
    assert_eq!(
        ns.sh(&format!("cat {f}; cat {f}; ls -a {mnt} >/dev/null"))?,
        "data\ndata\n"
    );
    // Past two periodic commits.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        atime()?,
        created,
        "an access time was recorded while read-only"
    );
    assert_eq!(ns.commits()?, commits, "a read-only mount committed");
    assert_eq!(generation()?, generation_ro);
    assert_eq!(
        hash_file(&meta)?,
        meta_hash,
        "meta.redb changed while read-only"
    );
    let out = ns.run(&["touch", &format!("{mnt}/g")])?;
    assert!(!out.status.success(), "a write on a read-only mount");
    // The kernel passes ioctls of a read-only mount on: the daemon refuses the snapshot itself.
    let out = ns.run(&[COWFS, "snapshot", &f, &format!("{mnt}/copy")])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Read-only file system"),
        "{err}"
    );
    assert_eq!(ns.commits()?, commits);
    assert_eq!(hash_file(&meta)?, meta_hash);

    // Writable again, with the mount's own atime policy (relatime): the read is recorded and
    // committed.
    ns.ok(&["mount", "-o", "remount,rw", mnt])?;
    assert!(!read_only()?);
    assert_eq!(ns.sh(&format!("cat {f}"))?, "data\n");
    let read = atime()?;
    assert_ne!(
        read, created,
        "relatime records the first read after the change"
    );
    std::thread::sleep(Duration::from_millis(2500));
    assert!(ns.commits()? > commits, "the periodic commit runs again");
    assert!(generation()? > generation_ro);
    assert_eq!(atime()?, read, "relatime: once per change");
    let pid = ns.daemon_pid()?;
    ns.ok(&["umount", mnt])?;
    ns.gone(pid)?;
    // The access time was committed.
    ns.ok(&["mount", "-t", "fuse.cowfs", store, mnt, "-o", "ttl=0"])?;
    assert_eq!(atime()?, read);
    let pid = ns.daemon_pid()?;
    ns.ok(&["umount", mnt])?;
    ns.gone(pid)?;
    Ok(())
}
