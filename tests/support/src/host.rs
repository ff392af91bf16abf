//! Files on the host (or on a mount): pattern files written and checked in 1 MiB pieces, content
//! hashes of whole files, device nodes.

use crate::{first_difference, pattern_at, ContentHash};
use rustix::fs::{FileType, Mode, CWD};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

const CHUNK: usize = 1 << 20;

/// A path as `&str`, for command lines and messages.
pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap_or("<non-utf8>")
}

/// Create `path` holding `size` bytes of `pattern_at(seed, ..)`, and fsync it.
pub fn write_pattern(path: &Path, seed: u64, size: u64) -> io::Result<()> {
    let mut f = File::create(path)?;
    let mut off = 0;
    while off < size {
        let n = (size - off).min(CHUNK as u64) as usize;
        f.write_all(&pattern_at(seed, off, n))?;
        off += n as u64;
    }
    f.sync_all()
}

/// Check that `path` is `size` bytes of `pattern_at(seed, ..)` except for `patches` (offset,
/// bytes written over it); the error names the first differing byte.
pub fn check_pattern(
    path: &Path,
    seed: u64,
    size: u64,
    patches: &[(u64, &[u8])],
) -> Result<(), String> {
    let mut f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    if len != size {
        return Err(format!("{}: size {len}, want {size}", path.display()));
    }
    let mut off = 0u64;
    let mut buf = vec![0u8; CHUNK];
    while off < size {
        let n = (size - off).min(CHUNK as u64) as usize;
        f.read_exact(&mut buf[..n]).map_err(|e| e.to_string())?;
        let mut want = pattern_at(seed, off, n);
        for (at, bytes) in patches {
            for (k, b) in bytes.iter().enumerate() {
                let p = at + k as u64;
                if p >= off && p < off + n as u64 {
                    want[(p - off) as usize] = *b;
                }
            }
        }
        if let Some(first) = first_difference(&buf[..n], &want) {
            return Err(format!(
                "{}: differs at byte {}",
                path.display(),
                off + first as u64
            ));
        }
        off += n as u64;
    }
    Ok(())
}

/// The content hash of a whole file, read 1 MiB at a time.
pub fn hash_file(p: &Path) -> io::Result<u64> {
    let mut f = File::open(p)?;
    let mut h = ContentHash::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finish());
        }
        h.update(&buf[..n]);
    }
}

/// mknod(2): `mode` carries the file type (`S_IFIFO`, `S_IFCHR`, ...) and the permission bits.
pub fn mknod(p: &Path, mode: u32, dev: u64) -> io::Result<()> {
    rustix::fs::mknodat(
        CWD,
        p,
        FileType::from_raw_mode(mode),
        Mode::from_raw_mode(mode),
        dev,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_files_check_and_name_the_first_difference() -> io::Result<()> {
        let dir = std::env::temp_dir().join(format!("cowfs-support-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let f = dir.join("p");
        let size = CHUNK as u64 + 4099;
        write_pattern(&f, 9, size)?;
        assert_eq!(check_pattern(&f, 9, size, &[]), Ok(()));
        assert!(check_pattern(&f, 10, size, &[]).is_err());
        assert!(check_pattern(&f, 9, size - 1, &[]).is_err());
        let at = CHUNK as u64 + 3;
        assert_eq!(
            check_pattern(&f, 9, size, &[(at, b"x")]),
            Err(format!("{}: differs at byte {at}", f.display()))
        );
        assert_eq!(
            hash_file(&f)?,
            crate::hash(&pattern_at(9, 0, size as usize))
        );
        std::fs::remove_dir_all(&dir)
    }
}
