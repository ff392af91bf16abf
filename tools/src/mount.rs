//! `cowfs mount`: mount a store. Without `-f` it starts itself again with `-f` as a daemon in a
//! new session (no fork in a threaded process) and returns once that daemon reports the mount
//! live, or prints the daemon's error. Also the `mount.fuse.cowfs` helper for mount(8).

use crate::options::{self, MountOpts};
use crate::{logger, CmdResult};
use cowfs_fs::session::holder_is_releasing;
use cowfs_fs::{MountError, MountSpec, Mounted};
use log::{error, info, warn};
use nix::sys::signal::{SigSet, Signal};
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
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
}

/// mount(8) runs `mount.fuse.cowfs STORE MOUNTPOINT [-o OPTS] [-n] [-s] [-v] [-f]`: turn that
/// into `cowfs mount ...` (there, `-f` means "fake", so it and the others are dropped).
pub fn helper_args(args: Vec<OsString>) -> Vec<OsString> {
    let is_helper = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|n| n == "mount.fuse.cowfs" || n == "mount.cowfs");
    if !is_helper {
        return args;
    }
    let mut out = vec![OsString::from("cowfs"), OsString::from("mount")];
    out.extend(
        args.into_iter()
            .skip(1)
            .filter(|a| !matches!(a.to_str(), Some("-n" | "-s" | "-v" | "-f"))),
    );
    out
}

pub fn run(a: Args) -> CmdResult {
    let opts = options::parse(&a.options)?;
    if a.foreground {
        serve(&a, &opts)
    } else {
        start_daemon(&a, &opts)
    }
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
        .arg(&a.store)
        .arg(&a.mountpoint)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(stderr);
    if let Some(lower) = &a.lower {
        cmd.arg("--lower").arg(absolute(lower));
    }
    for o in &a.options {
        cmd.arg("-o").arg(o);
    }
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
        fs: opts.fs_config(),
        options: opts.kernel_options(),
        acl: opts.acl,
        threads: opts.threads,
        readahead_kb: opts.readahead_kb,
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
