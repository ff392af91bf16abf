//! The daemon's log: one line per record, `2025-01-31T12:00:00.123Z LEVEL target: message`, on
//! stderr (which the background daemon has pointed at its log file).

use log::{Level, LevelFilter, Log, Metadata, Record};
use rustix::fs::{Mode, OFlags};
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

struct StderrLog {
    level: LevelFilter,
}

impl Log for StderrLog {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= self.level
    }

    fn log(&self, r: &Record<'_>) {
        if !self.enabled(r.metadata()) || is_fuser_unmount_noise(r) {
            return;
        }
        let line = format!(
            "{} {:<5} {}: {}\n",
            timestamp(SystemTime::now()),
            r.level(),
            r.target(),
            r.args()
        );
        // A full disk or a closed log must not take the daemon down.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
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

/// Install the logger: `debug` logs every request; otherwise COWFS_LOG (error, warn, info,
/// debug, trace) or info.
pub fn init(debug: bool) {
    let level = if debug {
        LevelFilter::Debug
    } else {
        std::env::var("COWFS_LOG")
            .ok()
            .and_then(|v| v.parse::<Level>().ok())
            .map_or(LevelFilter::Info, |l| l.to_level_filter())
    };
    if log::set_logger(Box::leak(Box::new(StderrLog { level }))).is_ok() {
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

/// UTC time as ISO 8601 with milliseconds (days-to-civil from Howard Hinnant's algorithm).
fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_iso8601() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(951_782_400_000 + 3_723_456);
        assert_eq!(timestamp(t), "2000-02-29T01:02:03.456Z");
    }
}
