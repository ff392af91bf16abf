//! `cowfs mount`: mount a store. Without `-f` it starts itself again with `-f` as a daemon in a
//! new session (no fork in a threaded process) and returns once that daemon reports the mount
//! live, or prints the daemon's error. Also the `mount.fuse.cowfs` helper for mount(8).

use crate::options::{self, MountOpts};
use crate::{logger, CmdResult};
use cowfs_fs::control;
use cowfs_fs::session::holder_is_releasing;
use cowfs_fs::{MountError, MountSpec, Mounted};
use log::{error, info, warn};
use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::sys::signal::{SigSet, Signal};
use rustix::thread::LinkNameSpaceType;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// Mount the store in directory STORE at MOUNTPOINT.
#[derive(Debug, clap::Args)]
#[command(after_help = options::HELP)]
pub struct Args {
    /// The store directory (made by `cowfs mkfs`).
    pub store: PathBuf,
    /// An existing directory to mount on.
    pub mountpoint: PathBuf,
    /// Stay in the foreground and log to stderr; otherwise a background daemon serves the
    /// mount and logs to STORE/cowfs.log (or -o log=FILE).
    #[arg(short, long)]
    pub foreground: bool,
    /// Mount options, comma-separated (see below).
    #[arg(short = 'o', value_name = "OPT[,OPT...]")]
    pub options: Vec<String>,
    /// Overlay: show this read-only directory tree in the mount and keep every change in the
    /// store (it is never written). The store remembers it: later mounts may omit it, and a
    /// different directory is refused.
    #[arg(long, value_name = "DIR")]
    pub lower: Option<PathBuf>,
    /// Internal: report readiness on stdout to the `cowfs mount` that started this daemon.
    #[arg(long, hide = true)]
    pub notify_stdout: bool,
    /// Internal: called by mount(8) as `mount.fuse.cowfs` (see [`helper_args`]): suid and dev
    /// are on unless nosuid or nodev is given.
    #[arg(long, hide = true)]
    pub helper: bool,
    /// Internal: mount(8)'s `-f`: check the options, mount nothing.
    #[arg(long, hide = true)]
    pub fake: bool,
    /// Internal: mount(8)'s `-s`: skip unknown options.
    #[arg(long, hide = true)]
    pub sloppy: bool,
    /// Internal: mount(8)'s `-N NS`: mount in that mount namespace.
    #[arg(long, hide = true, value_name = "NS")]
    pub namespace: Option<PathBuf>,
}

/// mount(8) runs `mount.fuse.cowfs STORE MOUNTPOINT [-s] [-f] [-n] [-v] [-o OPTS] [-t TYPE]
/// [-N NS]` (util-linux's `exec_helper`): turn that into `cowfs mount --helper ...`, keeping
/// sloppy (`-s`), fake (`-f`) and the namespace; `-n` (no mtab) and `-v` mean nothing here.
pub fn helper_args(args: Vec<OsString>) -> Vec<OsString> {
    let is_helper = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|n| n == "mount.fuse.cowfs" || n == "mount.cowfs");
    if !is_helper {
        return args;
    }
    let mut out: Vec<OsString> = vec!["cowfs".into(), "mount".into(), "--helper".into()];
    let mut paths = Vec::new();
    let mut rest = args.into_iter().skip(1);
    while let Some(a) = rest.next() {
        match a.to_str() {
            Some("-n" | "-v") => {}
            Some("-s") => out.push("--sloppy".into()),
            Some("-f") => out.push("--fake".into()),
            // The type is ours (fuse.cowfs) whenever mount(8) chose this helper.
            Some("-t") => {
                rest.next();
            }
            Some("-N") => {
                out.push("--namespace".into());
                out.extend(rest.next());
            }
            Some("-o") => {
                out.push("-o".into());
                out.extend(rest.next());
            }
            Some(o) if o.starts_with("-o") => {
                out.push("-o".into());
                out.push(o["-o".len()..].into());
            }
            _ => paths.push(a),
        }
    }
    // After `--`, so that a store or mountpoint whose name starts with '-' stays a path.
    out.push("--".into());
    out.extend(paths);
    out
}

/// The options to mount with: those given, plus mount(8)'s defaults when it called us as its
/// helper. mount(8) (like libfuse's mount.fuse) passes suid and dev only by their absence,
/// having taken them out as the defaults they are for it; it adds nosuid and nodev itself where
/// they apply (user mounts).
fn effective_options(a: &Args) -> Vec<String> {
    let mut opts = a.options.clone();
    if a.helper {
        let given = |o: &str| a.options.iter().flat_map(|s| s.split(',')).any(|s| s == o);
        for (off, on) in [("nosuid", "suid"), ("nodev", "dev")] {
            if !given(off) {
                opts.push(on.into());
            }
        }
    }
    opts
}

pub fn run(mut a: Args) -> CmdResult {
    if let Some(ns) = &a.namespace {
        enter_mount_namespace(ns)?;
    }
    a.options = effective_options(&a);
    let (opts, skipped) = options::parse_with(&a.options, a.sloppy)?;
    if !skipped.is_empty() && !a.foreground {
        err!(
            "cowfs mount: ignoring unknown mount options {} (sloppy)",
            skipped.join(",")
        );
    }
    if a.fake {
        return Ok(ExitCode::SUCCESS);
    }
    if opts.remount {
        return remount(&a, &opts);
    }
    if a.foreground {
        serve(&a, &opts)
    } else {
        start_daemon(&a, &opts)
    }
}

/// mount(8)'s `-N`. Before any thread exists: setns(2) refuses a mount namespace to a process
/// that shares its filesystem attributes with threads.
fn enter_mount_namespace(ns: &Path) -> Result<(), String> {
    let f = std::fs::File::open(ns).map_err(|e| format!("namespace {}: {e}", ns.display()))?;
    rustix::thread::move_into_link_name_space(f.as_fd(), Some(LinkNameSpaceType::Mount))
        .map_err(|e| format!("entering mount namespace {}: {e}", ns.display()))
}

/// `-o remount,...` (what `mount -o remount,ro MOUNTPOINT` runs): change the live mount's flags
/// with mount(2) MS_REMOUNT, as for a kernel filesystem: read-only or read-write, suid, dev,
/// exec, sync, dirsync (the kernel keeps the atime flags when none are given), and tell the
/// daemon. Going read-only, the kernel first refuses it while a file is open for writing (and
/// writes back cached pages), then the daemon makes its store read-only: it commits what was
/// written before, once, and from then on changes nothing, access times included, and commits
/// nothing. Going read-write, the daemon becomes writable first (with the atime policy the
/// mount was made with), then the kernel lets writes through. The daemon's other options keep
/// the values it was started with.
fn remount(a: &Args, o: &MountOpts) -> CmdResult {
    let mp = absolute(&a.mountpoint);
    let stats = control::query(&mp)?;
    let store = a
        .store
        .canonicalize()
        .unwrap_or_else(|_| absolute(&a.store));
    if store != Path::new(&stats.store) {
        return Err(format!(
            "{} is the mount of {}, not of {}",
            mp.display(),
            stats.store,
            store.display()
        )
        .into());
    }
    if !o.read_only && daemon_store_read_only(stats.pid) {
        return Err(format!(
            "{}: its daemon opened the store read-only (mounted with -o ro); unmount it and mount \
             it again without ro to write",
            mp.display()
        )
        .into());
    }
    let mut flags = MsFlags::MS_REMOUNT;
    for (on, flag) in [
        (o.read_only, MsFlags::MS_RDONLY),
        (!o.suid, MsFlags::MS_NOSUID),
        (!o.dev, MsFlags::MS_NODEV),
        (o.noexec, MsFlags::MS_NOEXEC),
        (o.sync, MsFlags::MS_SYNCHRONOUS),
        (o.dirsync, MsFlags::MS_DIRSYNC),
    ] {
        if on {
            flags |= flag;
        }
    }
    let kernel = || {
        nix::mount::mount(None::<&str>, &mp, None::<&str>, flags, None::<&str>).map_err(|e| match e
        {
            Errno::EBUSY => format!(
                "{}: busy (a file is open for writing); cannot go read-only",
                mp.display()
            ),
            Errno::EPERM => format!("{}: remounting needs root", mp.display()),
            e => format!("remounting {}: {e}", mp.display()),
        })
    };
    if o.read_only {
        kernel()?;
        return match control::set_read_only(&mp, true) {
            Ok(()) => Ok(ExitCode::SUCCESS),
            // A daemon of an older cowfs: it keeps recording access times; commit at least.
            Err(control::QueryError::Failed(_, e)) if e.starts_with("unknown request") => {
                err!(
                    "cowfs mount: the daemon of {} is too old to go read-only itself: it still \
                     records access times",
                    mp.display()
                );
                control::sync(&mp).map_err(|e| format!("remounted read-only, but: {e}"))?;
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => Err(format!("remounted read-only, but: {e}").into()),
        };
    }
    let was_read_only = stats.read_only;
    match control::set_read_only(&mp, false) {
        Ok(()) => {}
        Err(control::QueryError::Failed(_, e)) if e.starts_with("unknown request") => {}
        Err(e) => return Err(e.into()),
    }
    if let Err(e) = kernel() {
        // The mount stays as it was: so does its daemon.
        if was_read_only {
            if let Err(e2) = control::set_read_only(&mp, true) {
                err!(
                    "cowfs mount: the daemon of {} stays writable: {e2}",
                    mp.display()
                );
            }
        }
        return Err(e.into());
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether daemon `pid` opened its store read-only: its command line has `-o ro` (it was started
/// as `cowfs mount ...`). Unknown (not readable, another command line) counts as no.
fn daemon_store_read_only(pid: u32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let mut opts = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "-o" {
            opts.extend(it.next().cloned());
        } else if let Some(o) = arg.strip_prefix("-o") {
            opts.push(o.to_string());
        }
    }
    options::parse_with(&opts, true).is_ok_and(|(o, _)| o.read_only)
}

/// Why the daemon's log could not be opened.
#[derive(Debug)]
enum LogError {
    /// Refused: a symlink, or not ours.
    Unsafe(String),
    Other(String),
}

impl std::fmt::Display for LogError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogError::Unsafe(m) | LogError::Other(m) => f.write_str(m),
        }
    }
}

/// Start `cowfs mount -f` in the background and wait for its first line on the pipe that is its
/// stdout: "ready", or "error: ...".
fn start_daemon(a: &Args, opts: &MountOpts) -> CmdResult {
    // Warnings of opening the log (a store whose modes were tightened) go to the terminal.
    logger::init(opts.debug);
    let (log, log_path) = match &opts.log {
        Some(p) => (
            logger::open_log_file(p).map_err(LogError::Unsafe),
            p.clone(),
        ),
        None => (
            cowstore::io::DirEnv::open(&a.store)
                .and_then(|env| env.open_log())
                .map_err(|e| match e {
                    cowstore::Error::UnsafeStore { .. } => LogError::Unsafe(e.to_string()),
                    e => LogError::Other(e.to_string()),
                }),
            a.store.join(cowstore::io::LOG_FILE),
        ),
    };
    let (stderr, log_note) = match log {
        Ok(f) => (Stdio::from(f), format!("; see {}", log_path.display())),
        // A log file that is a symlink or someone else's: refuse the mount.
        Err(e @ LogError::Unsafe(_)) => return Err(e.to_string().into()),
        // The store may not exist (the daemon will say so) or be read-only: no log then.
        Err(e) => {
            log::debug!("no log file: {e}");
            (Stdio::null(), String::new())
        }
    };
    let (reader, writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("mount")
        .arg("--foreground")
        .arg("--notify-stdout")
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(stderr);
    if a.sloppy {
        cmd.arg("--sloppy");
    }
    if let Some(lower) = &a.lower {
        cmd.arg("--lower").arg(absolute(lower));
    }
    for o in &a.options {
        cmd.arg("-o").arg(o);
    }
    cmd.arg("--").arg(&a.store).arg(&a.mountpoint);
    let mut child = cmd.spawn()?;
    // Our copy of the pipe's write end goes with `cmd`, so EOF means the daemon is gone.
    drop(cmd);
    let mut reader = BufReader::new(std::fs::File::from(reader));
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        match line.trim_end().strip_prefix("waiting: ") {
            Some(msg) => err!("cowfs mount: {msg}"),
            None => break,
        }
    }
    match line.trim_end() {
        "ready" => Ok(ExitCode::SUCCESS),
        msg if msg.starts_with("error: ") => {
            let _ = child.wait();
            Err(msg.trim_start_matches("error: ").to_string().into())
        }
        _ => {
            let status = child.wait()?;
            Err(format!("the daemon exited ({status}) before the mount was ready{log_note}").into())
        }
    }
}

/// Serve the mount in this process until it is unmounted.
fn serve(a: &Args, opts: &MountOpts) -> CmdResult {
    if a.notify_stdout {
        // Our own session: the terminal's signals and hangup are not ours.
        let _ = nix::unistd::setsid();
    }
    logger::init(opts.debug);
    // Block the stop signals before any thread starts, so every thread inherits the mask and
    // only the signal thread below receives them (with sigwait).
    let mut stop = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        stop.add(s);
    }
    stop.thread_block()?;

    let spec = MountSpec {
        store: absolute(&a.store),
        mountpoint: absolute(&a.mountpoint),
        open: cowstore::OpenOptions {
            lower: a.lower.as_deref().map(absolute),
            ..opts.open_options()
        },
        fs: opts.fs_config(a.lower.is_some()),
        options: opts.kernel_options(),
        acl: opts.acl,
        threads: opts.threads,
        readahead_kb: opts.readahead_kb,
        wb_max_ratio: opts.wb_max_ratio,
    };
    // Keep no directory busy: the daemon may outlive the shell it was started from.
    let _ = std::env::set_current_dir("/");
    let mut mounted = match mount_when_released(&spec, a.notify_stdout) {
        Ok(m) => m,
        Err(e) => {
            error!("{e}");
            if a.notify_stdout {
                notify(&format!("error: {e}"));
                return Ok(ExitCode::FAILURE);
            }
            return Err(e.into());
        }
    };
    spawn_signal_thread(&mut mounted, stop, spec.mountpoint.clone())?;
    info!(
        "serving {} at {} (pid {}, control socket {})",
        spec.store.display(),
        spec.mountpoint.display(),
        std::process::id(),
        mounted
            .control_socket()
            .map_or_else(|| "none".into(), |p| p.display().to_string())
    );
    if a.notify_stdout {
        notify("ready");
        // Nothing more goes to the starter, which has exited.
        if let Ok(null) = std::fs::File::open("/dev/null") {
            let _ = nix::unistd::dup2_stdout(&null);
        }
    }
    match mounted.run() {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            error!("session ended with an error: {e}");
            Err(e.into())
        }
    }
}

/// How long a mount waits for the previous daemon of its store to let go of it.
const RELEASE_WAIT: Duration = Duration::from_secs(30);

/// Mount; if the store is locked by a daemon whose mount is gone (it is still committing after
/// a plain `umount`), wait up to [`RELEASE_WAIT`] for it, saying so once. A holder that still
/// has the store mounted, or is not a mount daemon, fails at once.
fn mount_when_released(spec: &MountSpec, notify_stdout: bool) -> Result<Mounted, MountError> {
    let deadline = Instant::now() + RELEASE_WAIT;
    let mut announced = false;
    loop {
        match cowfs_fs::mount(spec) {
            Err(MountError::Store(cowstore::Error::InUse { holder, .. }))
                if Instant::now() < deadline
                    && holder.is_none_or(|pid| holder_is_releasing(pid, &spec.store)) =>
            {
                if !announced {
                    announced = true;
                    let who =
                        holder.map_or_else(|| "its holder".into(), |p| format!("process {p}"));
                    let msg = format!("waiting for {who} to release {}", spec.store.display());
                    warn!("{msg}");
                    if notify_stdout {
                        notify(&format!("waiting: {msg}"));
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn notify(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// SIGTERM/SIGINT/SIGHUP unmount, which ends the session the normal way (commit, close).
fn spawn_signal_thread(
    mounted: &mut Mounted,
    stop: SigSet,
    mountpoint: PathBuf,
) -> std::io::Result<()> {
    let mut unmounter = mounted.unmounter();
    std::thread::Builder::new()
        .name("cowfs-signals".into())
        .spawn(move || loop {
            let Ok(sig) = stop.wait() else { continue };
            info!("{sig}: unmounting {}", mountpoint.display());
            if let Err(e) = unmounter.unmount() {
                warn!("unmount: {e}; detaching instead");
                if let Err(e) = nix::mount::umount2(&mountpoint, nix::mount::MntFlags::MNT_DETACH) {
                    error!("lazy unmount of {}: {e}", mountpoint.display());
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn helper(args: &[&str]) -> Vec<String> {
        helper_args(args.iter().map(OsString::from).collect())
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn mount_helper_arguments_become_a_cowfs_mount() {
        // Regression (issue 13): mount(8)'s fake (-f) mounted for real and its -t, -N and -s
        // reached clap as paths or unknown flags.
        assert_eq!(
            helper(&["/sbin/mount.fuse.cowfs", "/s", "/m", "-o", "rw,commit=3"]),
            [
                "cowfs",
                "mount",
                "--helper",
                "-o",
                "rw,commit=3",
                "--",
                "/s",
                "/m"
            ]
        );
        assert_eq!(
            helper(&[
                "mount.fuse.cowfs",
                "/s",
                "/m",
                "-s",
                "-f",
                "-n",
                "-v",
                "-o",
                "ro",
                "-t",
                "fuse.cowfs",
                "-N",
                "/proc/1/ns/mnt"
            ]),
            [
                "cowfs",
                "mount",
                "--helper",
                "--sloppy",
                "--fake",
                "-o",
                "ro",
                "--namespace",
                "/proc/1/ns/mnt",
                "--",
                "/s",
                "/m"
            ]
        );
        assert_eq!(
            helper(&["cowfs", "stats", "/m"]),
            ["cowfs", "stats", "/m"],
            "not called as the helper"
        );
    }

    #[test]
    fn as_the_helper_suid_and_dev_are_on_unless_turned_off() -> Result<(), String> {
        // Regression (issue 13): mount(8) strips suid and dev (its defaults) before calling the
        // helper, so `mount -t fuse.cowfs -o suid,dev` mounted nosuid,nodev.
        let args = |helper: bool, o: &str| Args {
            store: "/s".into(),
            mountpoint: "/m".into(),
            foreground: false,
            options: vec![o.to_string()],
            lower: None,
            notify_stdout: false,
            helper,
            fake: false,
            sloppy: false,
            namespace: None,
        };
        let parsed = |a: &Args| options::parse_with(&effective_options(a), false).map(|(o, _)| o);
        let o = parsed(&args(true, "rw"))?;
        assert!(o.suid && o.dev);
        let o = parsed(&args(true, "rw,nosuid"))?;
        assert!(!o.suid && o.dev);
        let o = parsed(&args(true, "nodev,nosuid,noexec"))?;
        assert!(!o.suid && !o.dev && o.noexec);
        let o = parsed(&args(false, "rw"))?;
        assert!(!o.suid && !o.dev, "cowfs mount itself keeps nosuid,nodev");
        Ok(())
    }
}
