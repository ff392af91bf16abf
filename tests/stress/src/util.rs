//! What every workload shares: a seeded PRNG, a content hash, failures with exit codes, `cp`,
//! and the model-vs-file comparison that reports the first differing byte.

use std::fmt::Display;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

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

/// splitmix64: small, seedable, reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }

    /// An offset and length for a write into a file of `size` bytes that may grow to `max`:
    /// a mix of tiny unaligned, medium and large block-aligned writes, some past EOF (holes).
    pub fn write_range(&mut self, size: u64, max: u64) -> (u64, u64) {
        let (mut off, mut len) = match self.below(10) {
            0..=3 => (self.below(size + 1), 1 + self.below(600)),
            4..=6 => (self.below(size + 1), 1 + self.below(40_000)),
            7 => (size + self.below(70_000), 1 + self.below(9_000)),
            _ => (
                self.below(size / 4096 + 2) * 4096,
                4096 * (1 + self.below(64)),
            ),
        };
        off = off.min(max.saturating_sub(1));
        len = len.min(max - off);
        (off, len)
    }
}

/// 64-bit content hash (word-wise multiply-rotate with a final avalanche; not cryptographic,
/// but any real corruption, stale block or zeroed range changes it).
pub fn hash(data: &[u8]) -> u64 {
    let mut h: u64 = 0x243f_6a88_85a3_08d3 ^ data.len() as u64;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h.rotate_left(23) ^ u64::from_le_bytes(w)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    for &b in chunks.remainder() {
        h = (h.rotate_left(23) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
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

/// Apply a write to a model buffer (zero-filling a hole before `off`).
pub fn model_write(m: &mut Vec<u8>, off: u64, data: &[u8]) {
    let off = off as usize;
    if m.len() < off + data.len() {
        m.resize(off + data.len(), 0);
    }
    m[off..off + data.len()].copy_from_slice(data);
}

/// Compare what was read with the model; the message names the first differing byte.
pub fn compare(what: &str, got: &[u8], want: &[u8]) -> Res {
    if got == want {
        return Ok(());
    }
    let first = got.iter().zip(want).position(|(a, b)| a != b);
    Err(mismatch(match first {
        Some(i) => format!(
            "{what}: content differs from the model at byte {i} (read {:#04x}, expected {:#04x}); \
             read {} bytes, expected {}",
            got[i],
            want[i],
            got.len(),
            want.len()
        ),
        None => format!(
            "{what}: read {} bytes, expected {} (the common prefix is equal)",
            got.len(),
            want.len()
        ),
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
    fn hash_sees_length_and_every_byte() {
        let a = vec![0u8; 4096];
        let mut b = a.clone();
        assert_ne!(hash(&a), hash(&a[..4095]));
        for i in [0, 7, 8, 4095] {
            b[i] = 1;
            assert_ne!(hash(&a), hash(&b), "byte {i}");
            b[i] = 0;
        }
        assert_eq!(parse_hex(&hex(Some(hash(&a)))), Ok(Some(hash(&a))));
        assert_eq!(parse_hex("-"), Ok(None));
    }

    #[test]
    fn model_write_fills_holes_with_zeros() {
        let mut m = vec![1u8; 2];
        model_write(&mut m, 4, &[9, 9]);
        assert_eq!(m, [1, 1, 0, 0, 9, 9]);
        model_write(&mut m, 1, &[5]);
        assert_eq!(m, [1, 5, 0, 0, 9, 9]);
    }

    #[test]
    fn write_ranges_stay_below_max() {
        let mut r = Rng::new(7);
        for _ in 0..10_000 {
            let size = r.below(1 << 20);
            let (off, len) = r.write_range(size, 1 << 20);
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
