//! What every workload shares: failures with exit codes, `cp`, the mix of write sizes, and the
//! model-vs-file comparison that reports the first differing byte. The generator, the content
//! hash and the model write come from `cowfs-test-support`.

use std::fmt::Display;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use cowfs_test_support::first_difference;
pub use cowfs_test_support::{hash, write_into, Rng};

/// A failure with the process exit code it maps to (see main.rs).
#[derive(Debug)]
pub struct Fail {
    pub code: u8,
    pub msg: String,
}

pub type Res<T = ()> = Result<T, Fail>;

pub const USAGE: u8 = 1;
pub const GONE: u8 = 2;
pub const MISMATCH: u8 = 3;
pub const IO: u8 = 4;

pub fn usage(msg: impl Display) -> Fail {
    Fail {
        code: USAGE,
        msg: msg.to_string(),
    }
}

pub fn mismatch(msg: impl Display) -> Fail {
    Fail {
        code: MISMATCH,
        msg: msg.to_string(),
    }
}

/// The daemon was killed: requests fail with ENOTCONN (or ECONNABORTED while in flight).
pub fn is_gone(e: &io::Error) -> bool {
    matches!(errno(e), Some(libc::ENOTCONN | libc::ECONNABORTED))
}

/// An I/O error on `what`; GONE when the mount at `probe` answers ENOTCONN. The probe opens
/// the directory: a stat could be answered from the kernel's attribute cache.
pub fn io_fail(what: impl Display, e: &io::Error, probe: &Path) -> Fail {
    let gone = is_gone(e) || File::open(probe).is_err_and(|e| is_gone(&e));
    Fail {
        code: if gone { GONE } else { IO },
        msg: format!("{what}: {e}"),
    }
}

/// An offset and length for a write into a file of `size` bytes that may grow to `max`:
/// a mix of tiny unaligned, medium and large block-aligned writes, some past EOF (holes).
pub fn write_range(rng: &mut Rng, size: u64, max: u64) -> (u64, u64) {
    let (mut off, mut len) = match rng.below(10) {
        0..=3 => (rng.below(size + 1), 1 + rng.below(600)),
        4..=6 => (rng.below(size + 1), 1 + rng.below(40_000)),
        7 => (size + rng.below(70_000), 1 + rng.below(9_000)),
        _ => (
            rng.below(size / 4096 + 2) * 4096,
            4096 * (1 + rng.below(64)),
        ),
    };
    off = off.min(max.saturating_sub(1));
    len = len.min(max - off);
    (off, len)
}

pub fn hex(h: Option<u64>) -> String {
    h.map_or_else(|| "-".to_string(), |h| format!("{h:016x}"))
}

pub fn parse_hex(s: &str) -> Result<Option<u64>, String> {
    if s == "-" {
        return Ok(None);
    }
    u64::from_str_radix(s, 16)
        .map(Some)
        .map_err(|e| format!("bad hash {s:?}: {e}"))
}

/// Compare what was read with the model; the message names the first differing byte.
pub fn compare(what: &str, got: &[u8], want: &[u8]) -> Res {
    let Some(i) = first_difference(got, want) else {
        return Ok(());
    };
    Err(mismatch(if i < got.len().min(want.len()) {
        format!(
            "{what}: content differs from the model at byte {i} (read {:#04x}, expected {:#04x}); \
             read {} bytes, expected {}",
            got[i],
            want[i],
            got.len(),
            want.len()
        )
    } else {
        format!(
            "{what}: read {} bytes, expected {} (the common prefix is equal)",
            got.len(),
            want.len()
        )
    }))
}

pub fn read_at_exact(f: &File, off: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n = f.read_at(&mut buf[done..], off + done as u64)?;
        if n == 0 {
            buf.truncate(done);
            break;
        }
        done += n;
    }
    Ok(buf)
}

/// coreutils `cp SRC DST`: on cowfs one copy_file_range, which the daemon turns into a reflink.
pub fn cp(src: &Path, dst: &Path) -> io::Result<()> {
    let out = Command::new("cp").arg(src).arg(dst).output()?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    // Give the errno back so callers can tell ENOTCONN/ENOSPC from a real failure.
    let errno = [
        ("Transport endpoint is not connected", libc::ENOTCONN),
        ("Software caused connection abort", libc::ECONNABORTED),
        ("No space left on device", libc::ENOSPC),
        ("No such file or directory", libc::ENOENT),
        ("Input/output error", libc::EIO),
    ]
    .iter()
    .find(|(s, _)| err.contains(s))
    .map(|&(_, e)| e);
    match errno {
        Some(e) => Err(io::Error::new(
            io::Error::from_raw_os_error(e).kind(),
            CpError { errno: e, err },
        )),
        None => Err(io::Error::other(format!("cp: {err} ({})", out.status))),
    }
}

/// A `cp` failure carrying the errno its message names.
#[derive(Debug)]
pub struct CpError {
    pub errno: i32,
    pub err: String,
}

impl Display for CpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cp: {}", self.err)
    }
}

impl std::error::Error for CpError {}

/// The errno of an error from std or from `cp`.
/// Close `f` and return what close(2) says (dropping a `File` ignores it). Under the kernel's
/// writeback cache, close is where a failed writeback of cached writes (ENOSPC) is reported.
pub fn close(f: File) -> io::Result<()> {
    use std::os::fd::IntoRawFd;
    let fd = f.into_raw_fd();
    // SAFETY: `fd` was just taken out of the `File`, which no longer owns it; it is closed once.
    if unsafe { libc::close(fd) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `fs::write` that reports what close(2) says.
pub fn write_file(p: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = File::create(p)?;
    f.write_all(data)?;
    close(f)
}

pub fn errno(e: &io::Error) -> Option<i32> {
    e.raw_os_error().or_else(|| {
        e.get_ref()
            .and_then(|i| i.downcast_ref::<CpError>())
            .map(|c| c.errno)
    })
}

/// Append one line to a log with a single write(2) (O_APPEND), so a line is whole or absent.
pub fn log_line(log: &mut File, line: &str) -> Res {
    let mut s = String::with_capacity(line.len() + 1);
    s.push_str(line);
    s.push('\n');
    log.write_all(s.as_bytes()).map_err(|e| Fail {
        code: USAGE,
        msg: format!("writing the log: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_round_trip_through_hex() {
        let h = hash(&[0u8; 4096]);
        assert_eq!(parse_hex(&hex(Some(h))), Ok(Some(h)));
        assert_eq!(parse_hex("-"), Ok(None));
    }

    #[test]
    fn write_ranges_stay_below_max() {
        let mut r = Rng::new(7);
        for _ in 0..10_000 {
            let size = r.below(1 << 20);
            let (off, len) = write_range(&mut r, size, 1 << 20);
            assert!(len >= 1 && off + len <= 1 << 20, "{off}+{len}");
        }
    }

    #[test]
    fn compare_names_the_first_difference() {
        assert!(compare("x", b"abc", b"abc").is_ok());
        let e = compare("x", b"abd", b"abc").err().map(|f| (f.code, f.msg));
        assert!(matches!(e, Some((MISMATCH, m)) if m.contains("byte 2")));
    }
}
