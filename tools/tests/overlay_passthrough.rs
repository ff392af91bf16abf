//! FUSE passthrough of unmodified lower files (issue 12): a read-only open of a lower file that
//! no write has touched is served by the kernel straight from the lower file (reads and mmap
//! never reach the daemon), a written file never is, a writer beside a passthrough reader waits
//! for it and then fails with ETXTBSY (the kernel cannot mix the two kinds of open on one
//! inode), `-o passthrough=off` turns it off, and the lower tree is never modified.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const SIZE: usize = 8 << 20;

/// Content hash, size, mtime and ctime (ns) of a lower file.
type FileState = (u64, u64, i64, i64);

/// The lower files compared before and after.
fn lower_state(lower: &Path) -> Result<BTreeMap<PathBuf, FileState>, std::io::Error> {
    let mut out = BTreeMap::new();
    for e in fs::read_dir(lower)? {
        let p = e?.path();
        let md = fs::metadata(&p)?;
        let c = (md.ctime(), md.ctime_nsec());
        out.insert(
            p.clone(),
            (
                hash_file(&p)?,
                md.size(),
                md.mtime() * 1_000_000_000 + md.mtime_nsec(),
                c.0 * 1_000_000_000 + c.1,
            ),
        );
    }
    Ok(out)
}

/// A store over a lower tree with `f` (SIZE random bytes, the last block partial) and `small`.
fn setup() -> Result<(Mount, PathBuf, Vec<u8>), Box<dyn std::error::Error>> {
    let m = Mount::unmounted(None)?;
    let lower = m.dir.path().join("lower");
    fs::create_dir(&lower)?;
    let bytes = Rng::new(12).bytes(SIZE - 1000);
    fs::write(lower.join("f"), &bytes)?;
    fs::write(lower.join("small"), b"hello lower")?;
    Ok((m, lower, bytes))
}

fn opens(m: &Mount) -> Result<u64, Box<dyn std::error::Error>> {
    m.counter("passthrough_opens")
}

/// 300 random reads (4 KiB aligned and unaligned) through `f` compared with `want`.
fn random_reads(f: &File, want: &[u8], seed: u64) -> TestResult {
    let mut rng = Rng::new(seed);
    let mut buf = vec![0u8; 8192];
    for i in 0..300 {
        let len = if i % 2 == 0 {
            4096
        } else {
            1 + rng.below(8192) as usize
        };
        let off = if i % 2 == 0 {
            rng.below(want.len() as u64 / 4096 + 1) * 4096
        } else {
            rng.below(want.len() as u64 + 100)
        };
        let n = f.read_at(&mut buf[..len], off)?;
        let start = (off as usize).min(want.len());
        let end = (start + len).min(want.len());
        assert_eq!(n, end - start, "read of {len} at {off}");
        assert!(
            buf[..n] == want[start..end],
            "bytes of the read of {len} at {off}"
        );
    }
    Ok(())
}

/// The whole file through a shared read-only mapping, compared with `want`.
fn check_mmap(f: &File, want: &[u8]) -> TestResult {
    let len = want.len();
    // SAFETY: a fresh read-only mapping of `len` bytes of an open file, read only inside this
    // function through the slice below and unmapped before returning.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert!(
        p != libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `p` maps `len` readable bytes (checked above) and outlives the slice.
    let mapped = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) };
    let same = mapped == want;
    // SAFETY: unmapping the mapping made above; `mapped` is not used after this.
    unsafe { libc::munmap(p, len) };
    assert!(same, "the mapped bytes differ from the lower file");
    Ok(())
}

#[test]
fn an_unmodified_lower_file_is_read_by_passthrough_byte_for_byte() -> TestResult {
    let (mut m, lower, want) = setup()?;
    let before = lower_state(&lower)?;
    m.mount_with(&["--lower", path_str(&lower)], &[])?;
    assert_eq!(opens(&m)?, 0);
    let f = File::open(m.path("f"))?;
    assert_eq!(opens(&m)?, 1, "the open was a passthrough open");
    let reads = m.counter("reads")?;
    random_reads(&f, &want, 1)?;
    check_mmap(&f, &want)?;
    // A second reader shares the backing file.
    let g = File::open(m.path("f"))?;
    assert_eq!(opens(&m)?, 2);
    random_reads(&g, &want, 2)?;
    assert_eq!(
        m.counter("reads")?,
        reads,
        "no read of a passthrough file reached the daemon"
    );
    drop((f, g));
    assert_eq!(fs::read(m.path("small"))?, b"hello lower");
    m.umount()?;
    assert_eq!(lower_state(&lower)?, before, "the lower tree changed");
    Ok(())
}

#[test]
fn a_file_written_through_the_mount_is_never_passed_through_again() -> TestResult {
    let (mut m, lower, mut want) = setup()?;
    let before = lower_state(&lower)?;
    m.mount_with(&["--lower", path_str(&lower)], &[])?;
    {
        let w = OpenOptions::new().write(true).open(m.path("f"))?;
        w.write_all_at(b"written through the mount", 5000)?;
    }
    want[5000..5025].copy_from_slice(b"written through the mount");
    let f = File::open(m.path("f"))?;
    assert_eq!(opens(&m)?, 0, "a written file is served by the daemon");
    random_reads(&f, &want, 3)?;
    let mut buf = [0u8; 25];
    f.read_exact_at(&mut buf, 5000)?;
    assert_eq!(&buf, b"written through the mount");
    check_mmap(&f, &want)?;
    drop(f);
    // And after a remount (the store reopened).
    m.umount()?;
    m.mount_with(&["--lower", path_str(&lower)], &[])?;
    let f = File::open(m.path("f"))?;
    assert_eq!(opens(&m)?, 0);
    random_reads(&f, &want, 4)?;
    drop(f);
    m.umount()?;
    assert_eq!(lower_state(&lower)?, before, "the lower tree changed");
    Ok(())
}

#[test]
fn a_writer_beside_a_passthrough_reader_gets_etxtbsy_and_the_reader_keeps_its_bytes() -> TestResult
{
    let (mut m, lower, mut want) = setup()?;
    let before = lower_state(&lower)?;
    m.mount_with(&["--lower", path_str(&lower)], &[])?;
    let reader = File::open(m.path("f"))?;
    assert_eq!(opens(&m)?, 1);
    // Another process opens the file for writing: it waits for the reader, then is refused.
    let started = Instant::now();
    let out = Command::new("dd")
        .args([
            "if=/dev/zero",
            "bs=1",
            "count=10",
            "seek=100",
            "conv=notrunc",
        ])
        .arg(format!("of={}", m.path("f").display()))
        .output()?;
    assert!(
        !out.status.success(),
        "the writer got in beside a passthrough reader"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Text file busy"),
        "dd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "it waited first"
    );
    // A truncate by path likewise; and in this process too.
    let path = std::ffi::CString::new(path_str(&m.path("f")))?;
    // SAFETY: truncate(2) of a NUL-terminated path.
    let r = unsafe { libc::truncate(path.as_ptr(), 10) };
    assert_eq!(r, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ETXTBSY)
    );
    let e = OpenOptions::new().read(true).write(true).open(m.path("f"));
    assert_eq!(errno(e), Some(libc::ETXTBSY));
    // Nothing was written: the reader still reads the lower bytes, and they are the file's.
    random_reads(&reader, &want, 5)?;
    assert_eq!(fs::metadata(m.path("f"))?.len(), want.len() as u64);
    drop(reader);
    // Closed: a writer gets in at once (the release reaches the daemon in time).
    let w = OpenOptions::new().write(true).open(m.path("f"))?;
    w.write_all_at(b"after", 100)?;
    drop(w);
    want[100..105].copy_from_slice(b"after");
    let f = File::open(m.path("f"))?;
    assert_eq!(opens(&m)?, 1, "no passthrough once written");
    random_reads(&f, &want, 6)?;
    drop(f);
    m.umount()?;
    assert_eq!(lower_state(&lower)?, before, "the lower tree changed");
    Ok(())
}

#[test]
fn read_then_write_in_quick_succession_is_not_refused() -> TestResult {
    // The kernel tells the daemon of a close with an asynchronous RELEASE: a writer right after
    // a reader closed must not be refused for the reader the kernel has already let go.
    let (mut m, lower, _) = setup()?;
    for i in 0..20 {
        fs::write(lower.join(format!("q{i}")), vec![i as u8; 10_000])?;
    }
    m.mount_with(&["--lower", path_str(&lower)], &[])?;
    for i in 0..20 {
        let p = m.path(&format!("q{i}"));
        assert_eq!(fs::read(&p)?, vec![i as u8; 10_000]);
        let w = OpenOptions::new().append(true).open(&p)?;
        w.write_all_at(b"!", 0)?;
    }
    assert_eq!(opens(&m)?, 20);
    m.umount()?;
    Ok(())
}

#[test]
fn passthrough_off_serves_every_read_from_the_daemon() -> TestResult {
    let (mut m, lower, want) = setup()?;
    let before = lower_state(&lower)?;
    m.mount_with(&["--lower", path_str(&lower)], &["passthrough=off"])?;
    let f = File::open(m.path("f"))?;
    let reads = m.counter("reads")?;
    random_reads(&f, &want, 7)?;
    assert_eq!(opens(&m)?, 0);
    assert!(m.counter("reads")? > reads, "the daemon served the reads");
    // No passthrough reader, so a writer is not refused.
    let w = OpenOptions::new().write(true).open(m.path("f"))?;
    w.write_all_at(b"w", 0)?;
    drop((f, w));
    m.umount()?;
    assert_eq!(lower_state(&lower)?, before, "the lower tree changed");
    Ok(())
}
