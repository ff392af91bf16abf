//! Every command in a pipe behaves as coreutils do: a reader that has gone away ends it quietly,
//! killed by SIGPIPE, and no command ever shows a user a Rust panic.

mod common;

use common::*;
use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Output, Stdio};

/// Which of a command's outputs goes to a pipe whose reader has already gone.
#[derive(Clone, Copy, Debug)]
enum Closed {
    Stdout,
    Stderr,
}

/// A pipe whose read end is closed: the first write to it fails with EPIPE.
fn closed_pipe() -> Result<OwnedFd, Box<dyn std::error::Error>> {
    let (reader, writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    drop(reader);
    Ok(writer)
}

/// Run `program args` with one output on a closed pipe; the other is captured.
fn run_closed(
    program: &str,
    args: &[&str],
    which: Closed,
) -> Result<(ExitStatus, String), Box<dyn std::error::Error>> {
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null());
    let pipe = Stdio::from(closed_pipe()?);
    match which {
        Closed::Stdout => cmd.stdout(pipe).stderr(Stdio::piped()),
        Closed::Stderr => cmd.stdout(Stdio::piped()).stderr(pipe),
    };
    let out = cmd.output()?;
    let other = match which {
        Closed::Stdout => out.stderr,
        Closed::Stderr => out.stdout,
    };
    Ok((out.status, String::from_utf8_lossy(&other).into_owned()))
}

/// `cowfs args` with `which` on a closed pipe must die of SIGPIPE as `ls` does in the same
/// place, and print nothing else (on stderr, when stdout is the closed one).
fn assert_quiet_sigpipe(args: &[&str], which: Closed) -> TestResult {
    // coreutils, in the same setup, is the reference: killed by SIGPIPE.
    let reference = match which {
        Closed::Stdout => run_closed("ls", &["-l", "/"], which)?.0,
        Closed::Stderr => run_closed("ls", &["/no/such/path"], which)?.0,
    };
    assert_eq!(reference.signal(), Some(libc::SIGPIPE), "ls: {reference}");
    let (status, other) = run_closed(COWFS, args, which)?;
    assert!(!other.contains("panicked"), "cowfs {args:?}: {other}");
    assert_eq!(
        status.signal(),
        reference.signal(),
        "cowfs {args:?} with {which:?} closed: {status} (ls: {reference}); it said: {other}"
    );
    if matches!(which, Closed::Stdout) {
        assert_eq!(other, "", "cowfs {args:?} said more than nothing on stderr");
    }
    Ok(())
}

#[test]
fn every_command_ends_quietly_when_its_reader_has_gone() -> TestResult {
    // Regression (issue 13): `cowfs stats MNT | head -3` panicked with "failed printing to
    // stdout: Broken pipe" and a backtrace, as did every command printing to a closed pipe.
    let mut m = Mount::new(&[])?;
    fs::write(m.path("a"), pattern(1, 300_000))?;
    fs::create_dir(m.path("dir"))?;
    for i in 0..20 {
        fs::write(m.path(&format!("dir/f{i}")), pattern(i, 5000))?;
    }
    let mnt = path_str(&m.mnt).to_string();
    for args in [
        vec!["stats", &mnt],
        vec!["stats", "--json", &mnt],
        vec!["--help"],
        vec!["--version"],
        vec!["stats", "--help"],
        vec!["mount", "--help"],
        vec!["capabilities", "--no-probe"],
        vec!["capabilities"],
    ] {
        assert_quiet_sigpipe(&args, Closed::Stdout)?;
    }
    m.umount()?;
    let store = path_str(&m.store).to_string();
    for args in [
        vec!["fsck", &store],
        vec!["fsck", "--json", &store],
        vec!["inspect", &store],
        vec!["inspect", "--json", &store],
        vec!["inspect", &store, "/a"],
        vec!["du", &store],
        vec!["du", "--json", &store],
        vec!["du", "-s", &store],
    ] {
        assert_quiet_sigpipe(&args, Closed::Stdout)?;
    }
    // A command that fails, with its stderr on a closed pipe, dies the same way.
    assert_quiet_sigpipe(&["stats", "/no/such/mount"], Closed::Stderr)?;
    assert_quiet_sigpipe(&["inspect", "/no/such/store"], Closed::Stderr)?;
    assert_quiet_sigpipe(&["frobnicate"], Closed::Stderr)?;
    Ok(())
}

#[test]
fn a_real_pipe_into_head_shows_the_first_line_and_nothing_else() -> TestResult {
    // Issue 13, as a user types it: `head -1` exits after its line, and cowfs's later writes
    // find the pipe closed (or fitted in it before).
    let m = Mount::new(&[])?;
    for (cmd, first) in [
        (
            format!("'{COWFS}' stats '{}' | head -1", path_str(&m.mnt)),
            "mountpoint",
        ),
        (
            format!("'{COWFS}' --help | head -1"),
            "cowfs: a copy-on-write",
        ),
    ] {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("{cmd}; echo \"status ${{PIPESTATUS[0]}}\""))
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stdout.starts_with(first), "{cmd}: {stdout}");
        assert_eq!(stdout.lines().count(), 2, "{cmd}: {stdout}");
        // 0 if everything fitted in the pipe before head exited, else SIGPIPE's 141.
        let status = stdout.lines().last().unwrap_or_default();
        assert!(
            status == "status 0" || status == "status 141",
            "{cmd}: {status}"
        );
        assert_eq!(stderr, "", "{cmd}");
    }
    Ok(())
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn a_panic_is_one_line_and_exit_status_70() -> TestResult {
    // Regression (issue 13): a panic printed Rust's report ("thread 'main' panicked at ...",
    // a note about RUST_BACKTRACE) and exited 101.
    let m = Mount::unmounted(None)?;
    let out = Command::new(COWFS)
        .args(["inspect", path_str(&m.store)])
        .env("COWFS_TEST_PANIC", "1")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(70), "{}", text(&out));
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.starts_with("cowfs inspect: internal error (a bug in cowfs): COWFS_TEST_PANIC"),
        "{stderr}"
    );
    assert!(stderr.contains("main.rs:"), "says where: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("RUST_BACKTRACE"), "{stderr}");

    // Asked for, the backtrace follows the line.
    let out = Command::new(COWFS)
        .args(["inspect", path_str(&m.store)])
        .env("COWFS_TEST_PANIC", "1")
        .env("RUST_BACKTRACE", "1")
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(70), "{}", text(&out));
    assert!(stderr.lines().count() > 3, "a backtrace: {stderr}");
    assert!(stderr.contains("cowfs::run"), "a backtrace: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    Ok(())
}

/// A foreground daemon (`cowfs mount -f`), unmounted and reaped however the test ends.
struct Foreground {
    child: std::process::Child,
    mnt: std::path::PathBuf,
}

impl Drop for Foreground {
    fn drop(&mut self) {
        // Also when the daemon died: its mount is left behind, disconnected.
        lazy_umount(&self.mnt);
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn a_daemon_whose_log_reader_has_gone_keeps_serving() -> TestResult {
    // Regression (issue 13): SIGPIPE must stay ignored in the daemon; only a command whose
    // output reader has gone dies of it. `cowfs mount -f ... 2>&1 | tee LOG`, with tee gone,
    // must not take the mount down at its next log line.
    let m = Mount::unmounted(None)?;
    let (reader, writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let mut d = Foreground {
        child: Command::new(COWFS)
            .args(["mount", "-f", path_str(&m.store), path_str(&m.mnt)])
            // Every request is a log line.
            .args(["-o", "debug"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(writer))
            .spawn()?,
        mnt: m.mnt.clone(),
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while cowfs(&["stats", path_str(&m.mnt)])?.status.code() != Some(0) {
        assert!(
            std::time::Instant::now() < deadline,
            "the mount never came up"
        );
        assert!(d.child.try_wait()?.is_none(), "the daemon exited");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(reader);
    for i in 0..20 {
        let p = m.mnt.join(format!("f{i}"));
        fs::write(&p, pattern(i, 10_000))?;
        assert_eq!(fs::read(&p)?, pattern(i, 10_000));
    }
    assert!(d.child.try_wait()?.is_none(), "the daemon died");
    run_ok(&["umount", path_str(&m.mnt)])?;
    let status = d.child.wait()?;
    assert!(status.success(), "the daemon ended with {status}");
    Ok(())
}

#[test]
fn a_full_disk_behind_stdout_is_an_error_not_a_panic() -> TestResult {
    // Regression (issue 13): println! panics on any write error; `cowfs ... > /dev/full` must
    // say "write error" and exit 1, as `echo` does.
    let m = Mount::unmounted(None)?;
    for args in [vec!["--help"], vec!["inspect", path_str(&m.store)]] {
        let out = Command::new(COWFS)
            .args(&args)
            .stdout(fs::OpenOptions::new().write(true).open("/dev/full")?)
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("write error: No space left on device"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    Ok(())
}
