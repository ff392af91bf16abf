//! Real mounts: POSIX ACLs (enforced by the kernel, kept in step with the mode by cowfs),
//! setuid/setgid rules, xattr namespaces and bounds, ioctls, as another user would meet them.
//! Other users are `nobody` (uid 65534, group nogroup) through `setpriv`, with or without the
//! supplementary group `daemon` (gid 1); ACLs through `setfacl`/`getfacl` (Debian's acl),
//! xattrs through `setfattr`/`getfattr` (attr) and the harness's syscall wrappers.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

/// The `daemon` group, which nobody (uid 65534) is not in unless a test adds it.
const DAEMON: u32 = 1;

fn cmd(program: &str, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(args).env("LC_ALL", "C");
    c
}

/// Run as root; `Err` with the stderr unless it succeeds.
fn root(program: &str, args: &[&str]) -> Result<String, String> {
    checked(cmd(program, args).output(), program, args)
}

/// Run as nobody, in supplementary groups `groups` (none: only nogroup).
fn nobody_out(groups: &[u32], program: &str, args: &[&str]) -> std::io::Result<Output> {
    let list: Vec<String> = groups.iter().map(u32::to_string).collect();
    let groups_arg = if groups.is_empty() {
        "--clear-groups".to_string()
    } else {
        format!("--groups={}", list.join(","))
    };
    let mut all = vec![
        "--reuid=65534",
        "--regid=65534",
        groups_arg.as_str(),
        "--",
        program,
    ];
    all.extend_from_slice(args);
    cmd("setpriv", &all).output()
}

fn nobody(groups: &[u32], program: &str, args: &[&str]) -> Result<String, String> {
    checked(nobody_out(groups, program, args), program, args)
}

/// True if running as nobody failed, saying `why` (strerror text).
fn nobody_fails(groups: &[u32], program: &str, args: &[&str], why: &str) -> bool {
    match nobody_out(groups, program, args) {
        Ok(o) => !o.status.success() && String::from_utf8_lossy(&o.stderr).contains(why),
        Err(_) => false,
    }
}

fn checked(out: std::io::Result<Output>, program: &str, args: &[&str]) -> Result<String, String> {
    let o = out.map_err(|e| format!("{program}: {e}"))?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {args:?}: {}: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

/// The mode bits as `stat -c %a` shows them: it asks the kernel for the mode only, so it
/// sees the kernel's cached mode, as exec and permission checks do.
fn mode(p: &Path) -> Result<String, String> {
    Ok(root("stat", &["-c", "%a", path_str(p)])?.trim().to_string())
}

/// `getfacl` without the header comments.
fn acl(p: &Path) -> Result<String, String> {
    root("getfacl", &["-c", "-p", path_str(p)])
}

/// A mount other users can reach (`allow_other`; the test's temp dir opened to them).
fn shared_mount() -> Result<Mount, Box<dyn std::error::Error>> {
    let m = Mount::new(&["allow_other"])?;
    fs::set_permissions(m.dir.path(), fs::Permissions::from_mode(0o755))?;
    Ok(m)
}

#[test]
fn acl_deny_entry_blocks_a_user() -> TestResult {
    // Regression (issue 10, defect 9): FUSE_POSIX_ACL was not requested, so ACLs were stored
    // but not enforced: `setfacl -m u:nobody:--- f` left nobody reading f.
    let m = shared_mount()?;
    let f = m.path("f");
    fs::write(&f, b"secret\n")?;
    fs::set_permissions(&f, fs::Permissions::from_mode(0o644))?;
    assert_eq!(nobody(&[], "cat", &[path_str(&f)])?, "secret\n");
    root("setfacl", &["-m", "u:nobody:---", path_str(&f)])?;
    assert!(acl(&f)?.contains("user:nobody:---"));
    assert!(nobody_fails(
        &[],
        "cat",
        &[path_str(&f)],
        "Permission denied"
    ));
    assert_eq!(fs::read(&f)?, b"secret\n", "root still reads");
    // Others are untouched by nobody's entry (the mask is the group's r--).
    assert_eq!(mode(&f)?, "644");
    root("setfacl", &["-x", "u:nobody", path_str(&f)])?;
    assert_eq!(nobody(&[], "cat", &[path_str(&f)])?, "secret\n");
    Ok(())
}

#[test]
fn acl_group_entry_grants_a_supplementary_member() -> TestResult {
    // Regression (issue 10, defect 9): a group entry must grant access to members of that
    // group, supplementary ones included (the kernel checks; cowfs must request the ACLs).
    let m = shared_mount()?;
    let f = m.path("f");
    fs::write(&f, b"for daemons\n")?;
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600))?;
    assert!(nobody_fails(
        &[DAEMON],
        "cat",
        &[path_str(&f)],
        "Permission denied"
    ));
    root("setfacl", &["-m", "g:daemon:r", path_str(&f)])?;
    assert_eq!(mode(&f)?, "640", "the group bits show the mask");
    assert_eq!(nobody(&[DAEMON], "cat", &[path_str(&f)])?, "for daemons\n");
    assert!(nobody_fails(
        &[],
        "cat",
        &[path_str(&f)],
        "Permission denied"
    ));
    assert!(nobody_fails(
        &[DAEMON],
        "sh",
        &["-c", &format!("echo x >> {}", path_str(&f))],
        "Permission denied"
    ));
    Ok(())
}

/// The same steps in a cowfs directory and a native one must give the same modes and ACLs.
fn default_acl_steps(dir: &Path) -> Result<String, String> {
    let d = dir.join("d");
    fs::create_dir(&d).map_err(|e| e.to_string())?;
    root(
        "setfacl",
        &[
            "-m",
            "d:u::rwx,d:g::r-x,d:o::---,d:u:nobody:rwx",
            path_str(&d),
        ],
    )?;
    let plain = dir.join("plain");
    fs::create_dir(&plain).map_err(|e| e.to_string())?;
    // umask 077 is ignored under a default ACL and applies elsewhere.
    let script = format!(
        "umask 077; touch {d}/f; mkdir {d}/sub; mkfifo {d}/fifo; ln -s f {d}/link; touch {p}/f",
        d = path_str(&d),
        p = path_str(&plain)
    );
    root("sh", &["-c", &script])?;
    let mut out = String::new();
    for name in ["d/f", "d/sub", "d/fifo", "plain/f"] {
        let p = dir.join(name);
        out += &format!("{name} {}\n{}", mode(&p)?, acl(&p)?);
    }
    out += &format!(
        "d/link {}\n",
        root("stat", &["-c", "%A", path_str(&d.join("link"))])?
    );
    Ok(out)
}

#[test]
fn default_acl_is_inherited_and_replaces_the_umask() -> TestResult {
    // Regression (issue 10, defect 9): new entries must inherit their directory's default ACL
    // (directories keep it as their own default), and then the umask is not applied, as on ext4.
    let m = shared_mount()?;
    let got = default_acl_steps(&m.mnt)?;
    let f = "d/f 660\nuser::rw-\nuser:nobody:rwx\t#effective:rw-\ngroup::r-x\t#effective:r--\n\
             mask::rw-\nother::---\n\n";
    assert!(got.starts_with(f), "{got}");
    let sub = "d/sub 770\nuser::rwx\nuser:nobody:rwx\ngroup::r-x\nmask::rwx\nother::---\n\
               default:user::rwx\ndefault:user:nobody:rwx\ndefault:group::r-x\n\
               default:mask::rwx\ndefault:other::---\n\n";
    assert!(got.contains(sub), "{got}");
    assert!(got.contains("d/fifo 660\n"), "{got}");
    assert!(
        got.contains("plain/f 600\nuser::rw-\ngroup::---\nother::---\n"),
        "umask applies without a default ACL: {got}"
    );
    assert!(got.contains("d/link lrwxrwxrwx"), "{got}");
    // The inherited entries work: nobody writes d/f and creates in d/sub, whose new file
    // inherits in turn.
    nobody(
        &[],
        "sh",
        &["-c", &format!("echo hi > {}", path_str(&m.path("d/f")))],
    )?;
    nobody(&[], "touch", &[path_str(&m.path("d/sub/g"))])?;
    assert!(acl(&m.path("d/sub/g"))?.contains("user:nobody:rwx\t#effective:rw-"));
    // ext4 (or whatever holds the temp dir) gives the same, if it has ACLs.
    let native = tempfile::Builder::new().prefix("cowfs-native-").tempdir()?;
    match default_acl_steps(native.path()) {
        Ok(want) => assert_eq!(got, want, "cowfs differs from the native filesystem"),
        Err(e) => eprintln!("no native comparison: {e}"),
    }
    Ok(())
}

#[test]
fn chmod_updates_the_acl_mask() -> TestResult {
    // Regression (issue 10, defect 9): chmod of a file with an ACL must rewrite the ACL's
    // owner, mask and other entries (posix_acl_chmod), or the old mask keeps granting.
    let m = shared_mount()?;
    let f = m.path("f");
    fs::write(&f, b"x")?;
    fs::set_permissions(&f, fs::Permissions::from_mode(0o644))?;
    root("setfacl", &["-m", "u:nobody:rw", path_str(&f)])?;
    assert_eq!(mode(&f)?, "664");
    nobody(&[], "sh", &["-c", &format!("echo a >> {}", path_str(&f))])?;
    fs::set_permissions(&f, fs::Permissions::from_mode(0o640))?;
    let a = acl(&f)?;
    assert!(a.contains("mask::r--"), "{a}");
    assert!(a.contains("user:nobody:rw-\t#effective:r--"), "{a}");
    assert!(a.contains("other::---"), "{a}");
    assert!(nobody_fails(
        &[],
        "sh",
        &["-c", &format!("echo b >> {}", path_str(&f))],
        "Permission denied"
    ));
    assert_eq!(nobody(&[], "cat", &[path_str(&f)])?, "xa\n");
    root("chmod", &["u=rwx,g=rw,o=r", path_str(&f)])?;
    let a = acl(&f)?;
    assert!(a.contains("user::rwx") && a.contains("mask::rw-") && a.contains("other::r--"));
    nobody(&[], "sh", &["-c", &format!("echo c >> {}", path_str(&f))])?;
    Ok(())
}

#[test]
fn setgid_directory_passes_on_group_and_setgid() -> TestResult {
    // Regression (issue 10, defect 19): entries made in a setgid directory take its group,
    // directories also its setgid bit, with and without a default ACL.
    let m = shared_mount()?;
    let d = m.path("sg");
    fs::create_dir(&d)?;
    root("chgrp", &["daemon", path_str(&d)])?;
    fs::set_permissions(&d, fs::Permissions::from_mode(0o2777))?;
    root(
        "sh",
        &[
            "-c",
            &format!("umask 022; cd {}; touch f; mkdir sub", path_str(&d)),
        ],
    )?;
    nobody(
        &[],
        "sh",
        &[
            "-c",
            &format!("umask 022; cd {}; touch n; mkdir nd", path_str(&d)),
        ],
    )?;
    let owners = root(
        "stat",
        &[
            "-c",
            "%n %a %U:%G",
            path_str(&d.join("f")),
            path_str(&d.join("sub")),
            path_str(&d.join("n")),
            path_str(&d.join("nd")),
        ],
    )?;
    let want = [
        format!("{}/f 644 root:daemon", path_str(&d)),
        format!("{}/sub 2755 root:daemon", path_str(&d)),
        format!("{}/n 644 nobody:daemon", path_str(&d)),
        format!("{}/nd 2755 nobody:daemon", path_str(&d)),
    ];
    assert_eq!(owners.lines().collect::<Vec<_>>(), want);
    // With a default ACL too: the group and setgid bit as before, the ACL instead of the umask.
    root(
        "setfacl",
        &["-m", "d:u::rwx,d:g::rwx,d:o::r-x", path_str(&d)],
    )?;
    root(
        "sh",
        &[
            "-c",
            &format!("umask 077; cd {}; touch af; mkdir ad", path_str(&d)),
        ],
    )?;
    assert_eq!(mode(&d.join("af"))?, "664");
    assert_eq!(mode(&d.join("ad"))?, "2775");
    assert!(acl(&d.join("ad"))?.contains("default:other::r-x"));
    let g = root(
        "stat",
        &["-c", "%G", path_str(&d.join("af")), path_str(&d.join("ad"))],
    )?;
    assert_eq!(g, "daemon\ndaemon\n");
    Ok(())
}

#[test]
fn setgid_dropped_for_callers_outside_the_group() -> TestResult {
    // Regression (issue 10, defect 19): chmod g+s by a non-member (not root) must leave the
    // setgid bit clear, and setting an access ACL by a non-member must clear it, as on ext4;
    // a member through a supplementary group keeps it.
    let m = shared_mount()?;
    let out = m.path("out");
    let member = m.path("member");
    for (p, group) in [(&out, "root"), (&member, "daemon")] {
        fs::write(p, b"x")?;
        root("chown", &[&format!("nobody:{group}"), path_str(p)])?;
    }
    nobody(&[DAEMON], "chmod", &["2755", path_str(&out)])?;
    assert_eq!(mode(&out)?, "755");
    nobody(&[DAEMON], "chmod", &["2755", path_str(&member)])?;
    assert_eq!(mode(&member)?, "2755");
    // With an ACL: chmod by the non-member still drops setgid and updates the mask.
    root("setfacl", &["-m", "u:daemon:rwx", path_str(&out)])?;
    nobody(&[], "chmod", &["2750", path_str(&out)])?;
    assert_eq!(mode(&out)?, "750");
    assert!(acl(&out)?.contains("mask::r-x"));
    // Setting an ACL: the mode follows it; setgid goes for a setter outside the group (the
    // store decides, from the caller's groups in /proc), stays for a member.
    root("chmod", &["2770", path_str(&out)])?;
    root("chmod", &["2770", path_str(&member)])?;
    nobody(&[DAEMON], "setfacl", &["-m", "u:bin:r", path_str(&out)])?;
    assert_eq!(mode(&out)?, "770");
    nobody(&[DAEMON], "setfacl", &["-m", "u:bin:r", path_str(&member)])?;
    assert_eq!(mode(&member)?, "2770");
    // An ACL equivalent to a mode is not stored; the mode takes its bits.
    nobody(&[DAEMON], "setfacl", &["-b", path_str(&member)])?;
    nobody(
        &[DAEMON],
        "setfacl",
        &["-m", "u::rw,g::r,o::-", path_str(&member)],
    )?;
    assert_eq!(mode(&member)?, "2640");
    assert!(getxattr(&member, "system.posix_acl_access", &mut []).is_err());
    Ok(())
}

#[test]
fn fallocate_drops_setuid_and_setgid() -> TestResult {
    // Regression (issue 10, defect 19): fallocate (allocate, punch, zero range) by an
    // unprivileged caller kept the setuid/setgid bits (a 2666 file stayed 2666); it must drop
    // them as a write does on ext4, and the kernel must see the new mode at once.
    let m = shared_mount()?;
    let f = m.path("f");
    let reset = |perm: &str, group: &str| -> Result<(), String> {
        let _ = fs::remove_file(&f);
        fs::write(&f, vec![7u8; 8192]).map_err(|e| e.to_string())?;
        root("chgrp", &[group, path_str(&f)])?;
        root("chmod", &[perm, path_str(&f)]).map(|_| ())
    };
    for args in [
        &["-l", "16384"][..],
        &["-n", "-l", "16384"],
        &["-p", "-o", "0", "-l", "4096"],
        &["-z", "-o", "0", "-l", "4096"],
    ] {
        let mut a = args.to_vec();
        let fp = path_str(&f).to_string();
        a.push(&fp);
        for (perm, want) in [("6666", "666"), ("2666", "666"), ("4666", "666")] {
            reset(perm, "root")?;
            nobody(&[], "fallocate", &a)?;
            assert_eq!(mode(&f)?, want, "fallocate {args:?} by nobody on {perm}");
        }
        // A member keeps setgid unless the group may execute; root keeps both.
        reset("2666", "daemon")?;
        nobody(&[DAEMON], "fallocate", &a)?;
        assert_eq!(mode(&f)?, "2666", "fallocate {args:?} by a member");
        reset("2676", "daemon")?;
        nobody(&[DAEMON], "fallocate", &a)?;
        assert_eq!(mode(&f)?, "676", "fallocate {args:?} by a member, g+x");
        reset("6666", "root")?;
        root("fallocate", &a)?;
        assert_eq!(mode(&f)?, "6666", "fallocate {args:?} by root");
    }
    // With an ACL: the bits go, the ACL stays.
    reset("6660", "root")?;
    root("setfacl", &["-m", "u:nobody:rw", path_str(&f)])?;
    nobody(&[], "fallocate", &["-l", "65536", path_str(&f)])?;
    assert_eq!(mode(&f)?, "660");
    assert!(acl(&f)?.contains("user:nobody:rw-"));
    // A write by a non-member drops setgid of a file the group may not execute, as on ext4
    // (the kernel's FUSE code only drops a group-executable one; the store does the rest).
    reset("2666", "root")?;
    nobody(&[], "sh", &["-c", &format!("echo x >> {}", path_str(&f))])?;
    assert_eq!(mode(&f)?, "666");
    reset("2666", "daemon")?;
    nobody(
        &[DAEMON],
        "sh",
        &["-c", &format!("echo x >> {}", path_str(&f))],
    )?;
    assert_eq!(mode(&f)?, "2666");
    Ok(())
}

#[test]
fn xattr_namespace_rules() -> TestResult {
    // Regression (issue 10, defect 12): system.* could be set by anyone, trusted.* names were
    // listed to unprivileged users; the namespace rules must be those of ext4.
    let m = shared_mount()?;
    let f = m.path("f");
    fs::write(&f, b"x")?;
    fs::set_permissions(&f, fs::Permissions::from_mode(0o666))?;
    setxattr(&f, "trusted.t", b"root only", 0)?;
    setxattr(&f, "security.s", b"readable", 0)?;
    setxattr(&f, "user.u", b"anyone", 0)?;
    let listed = |groups: &[u32]| {
        nobody(
            groups,
            "getfattr",
            &["--absolute-names", "-m", "-", path_str(&f)],
        )
    };
    let as_nobody = listed(&[])?;
    assert!(as_nobody.contains("user.u") && as_nobody.contains("security.s"));
    assert!(!as_nobody.contains("trusted"), "{as_nobody}");
    let as_root = root("getfattr", &["--absolute-names", "-m", "-", path_str(&f)])?;
    assert!(as_root.contains("trusted.t"), "{as_root}");
    // trusted.* and security.* writes need CAP_SYS_ADMIN; trusted.* is unreadable without.
    for name in ["trusted.t", "trusted.new", "security.s"] {
        assert!(nobody_fails(
            &[],
            "setfattr",
            &["-n", name, "-v", "1", path_str(&f)],
            "Operation not permitted"
        ));
        assert!(nobody_fails(
            &[],
            "setfattr",
            &["-x", name, path_str(&f)],
            "Operation not permitted"
        ));
    }
    assert!(nobody_fails(
        &[],
        "getfattr",
        &["-n", "trusted.t", path_str(&f)],
        "No such attribute"
    ));
    assert_eq!(
        nobody(
            &[],
            "getfattr",
            &["--only-values", "-n", "security.s", path_str(&f)]
        )?,
        "readable"
    );
    nobody(&[], "setfattr", &["-n", "user.v", "-v", "1", path_str(&f)])?;
    // Other system.* names, and names of no namespace, are not supported, for anyone.
    for name in ["system.foo", "system.posix_acl_accessx", "nonamespace"] {
        assert_eq!(
            errno(setxattr(&f, name, b"1", 0)),
            Some(libc::EOPNOTSUPP),
            "{name}"
        );
        assert_eq!(
            errno(getxattr(&f, name, &mut [])),
            Some(libc::EOPNOTSUPP),
            "{name}"
        );
        assert_eq!(
            errno(removexattr(&f, name)),
            Some(libc::EOPNOTSUPP),
            "{name}"
        );
        assert!(nobody_fails(
            &[],
            "setfattr",
            &["-n", name, "-v", "1", path_str(&f)],
            "Operation not supported"
        ));
    }
    // ACLs: only the owner (or root) sets them; they must be valid; default ones only on
    // directories.
    assert!(nobody_fails(
        &[],
        "setfacl",
        &["-m", "u:nobody:rwx", path_str(&f)],
        "Operation not permitted"
    ));
    let no_other = [
        2u8, 0, 0, 0, 1, 0, 6, 0, 255, 255, 255, 255, 4, 0, 4, 0, 255, 255, 255, 255,
    ];
    assert_eq!(
        errno(setxattr(&f, "system.posix_acl_access", &no_other, 0)),
        Some(libc::EINVAL)
    );
    let mut minimal = no_other.to_vec();
    minimal.extend_from_slice(&[0x20, 0, 4, 0, 255, 255, 255, 255]);
    assert_eq!(
        errno(setxattr(&f, "system.posix_acl_default", &minimal, 0)),
        Some(libc::EACCES)
    );
    // user.* only on regular files and directories; a sticky directory only by its owner.
    let link = m.path("link");
    symlink("f", &link)?;
    assert!(nobody_fails(
        &[],
        "setfattr",
        &["-h", "-n", "user.u", "-v", "1", path_str(&link)],
        "Operation not permitted"
    ));
    let sticky = m.path("sticky");
    fs::create_dir(&sticky)?;
    fs::set_permissions(&sticky, fs::Permissions::from_mode(0o1777))?;
    assert!(nobody_fails(
        &[],
        "setfattr",
        &["-n", "user.u", "-v", "1", path_str(&sticky)],
        "Operation not permitted"
    ));
    setxattr(&sticky, "user.u", b"1", 0)?;
    Ok(())
}

#[test]
fn xattr_space_is_bounded() -> TestResult {
    // Regression (issue 10, defect 12): no limit on xattrs per inode; values over 64 KiB are
    // E2BIG, and an inode's names and values are bounded (ENOSPC), its name list listable.
    let m = Mount::new(&[])?;
    let f = m.path("f");
    fs::write(&f, b"x")?;
    let big = vec![b'v'; 65536];
    assert_eq!(
        errno(setxattr(&f, "user.over", &vec![0u8; 65537], 0)),
        Some(libc::E2BIG)
    );
    for i in 0..3 {
        setxattr(&f, &format!("user.big{i}"), &big, 0)?;
    }
    assert_eq!(
        errno(setxattr(&f, "user.big3", &big, 0)),
        Some(libc::ENOSPC)
    );
    // Replacing a value counts its old size out.
    setxattr(&f, "user.big2", &big, 0)?;
    removexattr(&f, "user.big2")?;
    setxattr(&f, "user.big3", &big, 0)?;
    // Names: the list stays within what listxattr(2) can return.
    let g = m.path("g");
    fs::write(&g, b"x")?;
    let mut n = 0;
    let stopped = loop {
        let name = format!("user.{n:0>200}");
        match setxattr(&g, &name, b"", 0) {
            Ok(()) => n += 1,
            Err(e) => break e.raw_os_error(),
        }
        if n > 1000 {
            break None;
        }
    };
    assert_eq!(stopped, Some(libc::ENOSPC), "after {n} names");
    assert!(
        (300..=330).contains(&n),
        "{n} names of 205 bytes fit in 64 KiB"
    );
    let len = listxattr(&g, &mut [])?;
    let mut buf = vec![0u8; len];
    assert_eq!(listxattr(&g, &mut buf)?, len);
    // Other inodes are not affected.
    setxattr(&f, "user.small", b"1", 0)?;
    Ok(())
}

/// ioctl(2) with a command that takes no argument; the errno if it fails.
fn ioctl_none(f: &fs::File, cmd: u64) -> Option<i32> {
    use std::os::fd::AsRawFd;
    // SAFETY: an _IO command carries no argument, so the kernel reads and writes no memory of
    // ours; `f` is an open file for the duration of the call.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), cmd as _) };
    (rc < 0).then(|| std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
}

#[test]
fn unknown_ioctl_is_enotty_and_not_logged() -> TestResult {
    // Regression (issue 10, defect 23): every ioctl was logged as "[Not Implemented]"
    // (thousands of lines in a test run); an unknown one is answered ENOTTY quietly.
    let m = Mount::new(&[])?;
    let f = m.path("f");
    fs::write(&f, b"x")?;
    fs::create_dir(m.path("d"))?;
    // _IO(0xcf, 0x01): nobody's command; the kernel passes it to the daemon.
    const UNKNOWN: u64 = 0xcf01;
    for _ in 0..20 {
        assert_eq!(
            ioctl_none(&fs::File::open(&f)?, UNKNOWN),
            Some(libc::ENOTTY)
        );
        assert_eq!(
            ioctl_none(&fs::File::open(m.path("d"))?, UNKNOWN),
            Some(libc::ENOTTY)
        );
    }
    // (FS_IOC_GETFLAGS/SETFLAGS are implemented: tools/tests/posix.rs.)
    fs::write(&f, b"still writable")?;
    let log = fs::read_to_string(m.store.join("cowfs.log"))?;
    assert!(
        !log.contains("ioctl") && !log.contains("Not Implemented"),
        "{log}"
    );
    Ok(())
}

#[test]
fn no_default_permissions_is_refused() -> TestResult {
    // Regression (issue 10, defect 10): no_default_permissions turned every permission check
    // off while --help said cowfs would check instead; it is refused with the reason.
    let mut m = Mount::unmounted(None)?;
    let err = m
        .mount(&["no_default_permissions"])
        .err()
        .map(|e| e.to_string());
    let err = err.unwrap_or_default();
    assert!(
        err.contains("no_default_permissions is not supported"),
        "{err}"
    );
    assert!(fs::read_dir(&m.mnt)?.next().is_none(), "nothing mounted");
    Ok(())
}
