//! The daemon's log: env_logger's lines (`[2025-01-31T12:00:00.123Z INFO  target] message`) on
//! stderr, which the background daemon has pointed at its log file.

use log::{Level, LevelFilter, Log, Metadata, Record};
use rustix::fs::{Mode, OFlags};
use std::fs::File;
use std::path::Path;

/// env_logger, minus one line of fuser noise.
struct DaemonLog {
    inner: env_logger::Logger,
}

impl Log for DaemonLog {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        self.inner.enabled(m)
    }

    fn log(&self, r: &Record<'_>) {
        if !is_fuser_unmount_noise(r) {
            self.inner.log(r);
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// fuser 0.18 unmounts again when its session ends; after a plain `umount` its check sees the
/// aborted /dev/fuse (POLLERR) as still mounted, and umount(2) of the gone mount fails EINVAL.
/// That warning follows every normal unmount and means nothing: keep it for debug logs only.
fn is_fuser_unmount_noise(r: &Record<'_>) -> bool {
    r.level() == Level::Warn
        && r.target() == "fuser::session"
        && log::max_level() < LevelFilter::Debug
        && r.args()
            .to_string()
            .starts_with("Failed to umount filesystem: Invalid argument")
}

/// Install the logger: `debug` logs every request; otherwise COWFS_LOG (an env_logger filter:
/// error, warn, info, debug, trace, or per module) or info. Lines go to stderr (which the
/// background daemon has pointed at its log file), stamped in UTC with milliseconds.
pub fn init(debug: bool) {
    let mut b = env_logger::Builder::new();
    b.target(env_logger::Target::Stderr)
        .format_timestamp_millis()
        .filter_level(LevelFilter::Info);
    if let Ok(spec) = std::env::var("COWFS_LOG") {
        b.parse_filters(&spec);
    }
    if debug {
        b.filter_level(LevelFilter::Debug);
    }
    let inner = b.build();
    let level = inner.filter();
    if log::set_boxed_logger(Box::new(DaemonLog { inner })).is_ok() {
        log::set_max_level(level);
    }
}

/// Open (create, mode 0600) a log file named with `-o log=FILE` for appending, refusing to
/// follow a symlink: the daemon often runs as root.
pub fn open_log_file(path: &Path) -> Result<File, String> {
    let fd = rustix::fs::open(
        path,
        OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| {
        if e == rustix::io::Errno::LOOP {
            format!(
                "{}: is a symbolic link; refusing to follow it",
                path.display()
            )
        } else {
            format!("{}: {e}", path.display())
        }
    })?;
    Ok(File::from(fd))
}
