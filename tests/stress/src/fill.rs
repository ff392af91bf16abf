//! Fill a mount whose store sits on a small host filesystem. Writing more than the host holds
//! must end in ENOSPC, from write(2) or, under the kernel's writeback cache (which takes writes
//! into the page cache and writes them back later), from the fsync after it: writes refused
//! nowhere would be lost silently. fsync, close, creates, mkdir, `cp` and fallocate on the full
//! store may succeed or fail, but only with ENOSPC (EIO would mean the daemon lost track). Then
//! delete everything, wait for the space to come back (the next commit punches the freed
//! blocks), and write a file that `fill-check` verifies after a remount.

use crate::util::{
    close, cp, errno, hash, hex, io_fail, mismatch, parse_hex, usage, write_file, Fail, Res, Rng,
    IO,
};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory in the mount.
    #[arg(long)]
    dir: PathBuf,
    /// Size of the host filesystem in MiB: writing twice this and fsyncing it without ENOSPC is
    /// a failure.
    #[arg(long)]
    host_mib: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    #[arg(long)]
    dir: PathBuf,
}

/// Ok, or ENOSPC (reported); anything else fails the test.
fn only_enospc(step: &str, r: io::Result<()>, dir: &Path) -> Res<bool> {
    match r {
        Ok(()) => Ok(false),
        Err(e) if errno(&e) == Some(libc::ENOSPC) => Ok(true),
        Err(e) => Err(Fail {
            msg: format!("{step}: {e} (only ENOSPC is acceptable on a full store)"),
            ..io_fail(step, &e, dir)
        }),
    }
}

fn fallocate(f: &File, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall on an open fd with integer arguments.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len as libc::off_t) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub fn run(a: &Args) -> Res {
    let d = &a.dir;
    let mut rng = Rng::new(a.seed);
    let fail = |what: &str, e: &io::Error| io_fail(what, e, d);

    // 1. One big file, 1 MiB at a time, until write(2) refuses or twice the host went in.
    let big = d.join("big");
    let mut f = File::create(&big).map_err(|e| fail("create big", &e))?;
    let chunk = rng.bytes(MIB as usize);
    let mut written = 0u64;
    let mut refused = false;
    while written < 2 * a.host_mib * MIB {
        if let Err(e) = f.write_all(&chunk) {
            if errno(&e) != Some(libc::ENOSPC) {
                return Err(Fail {
                    msg: format!("data write on a full host: {e} (must be ENOSPC)"),
                    ..fail("write big", &e)
                });
            }
            refused = true;
            break;
        }
        written += MIB;
    }
    println!(
        "data: {} after {} MiB",
        if refused { "ENOSPC" } else { "no ENOSPC" },
        written / MIB
    );

    // 2. fsync of that file: ENOSPC if write(2) said nothing (the writeback of the cached
    //    writes failed); after an ENOSPC from write(2), the commit may itself be short of
    //    space, or not.
    let full = only_enospc("fsync big", f.sync_all(), d)?;
    println!(
        "fsync on the full store: {}",
        if full { "ENOSPC" } else { "ok" }
    );
    if !refused && !full {
        return Err(mismatch(format!(
            "{written} bytes went into a {} MiB host and neither write nor fsync said ENOSPC",
            a.host_mib
        )));
    }
    only_enospc("close big", close(f), d)?;

    // 3. Small files and directories until ENOSPC (metadata and tail blocks), fsyncing the
    //    directory every 100 so the metadata must reach the host.
    let m = d.join("many");
    let made_dir = only_enospc("mkdir many", fs::create_dir(&m), d)?;
    let (mut files, mut dirs, mut hit) = (0u64, 0u64, made_dir);
    while !hit && files < 20_000 {
        let i = files;
        let r = if i % 10 == 0 {
            fs::create_dir(m.join(format!("d{i}"))).map(|()| dirs += 1)
        } else {
            let len = if i % 2 == 0 {
                0
            } else {
                1 + rng.below(5000) as usize
            };
            write_file(&m.join(format!("f{i}")), &rng.bytes(len))
        };
        hit = only_enospc("create in many/", r, d)?;
        files += 1;
        if !hit && files % 100 == 0 {
            hit = only_enospc("fsync many/", File::open(&m).and_then(|f| f.sync_all()), d)?;
        }
    }
    println!(
        "small files and directories: {} after {files} creates ({dirs} directories)",
        if hit { "ENOSPC" } else { "no ENOSPC" }
    );

    // 4. cp of the big file (a reflink: needs no data blocks) and of a small unaligned one
    //    (its tail block must be copied).
    let r = only_enospc("cp big", cp(&big, &d.join("big.copy")), d)?;
    println!("cp of the big file: {}", if r { "ENOSPC" } else { "ok" });
    let odd = d.join("odd");
    let r = only_enospc(
        "cp odd",
        write_file(&odd, &rng.bytes(5000)).and_then(|()| cp(&odd, &d.join("odd.copy"))),
        d,
    )?;
    println!(
        "write+cp of a 5000-byte file: {}",
        if r { "ENOSPC" } else { "ok" }
    );

    // 5. fallocate 16 MiB.
    let r = only_enospc(
        "fallocate",
        File::create(d.join("falloc")).and_then(|f| fallocate(&f, 16 * MIB)),
        d,
    )?;
    println!("fallocate 16 MiB: {}", if r { "ENOSPC" } else { "ok" });

    // 6. Delete everything: must work on a full store.
    for e in fs::read_dir(d).map_err(|e| fail("readdir", &e))? {
        let p = e.map_err(|e| fail("readdir", &e))?.path();
        let r = if p.is_dir() {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        };
        r.map_err(|e| fail(&format!("delete {}", p.display()), &e))?;
    }
    File::open(d)
        .and_then(|f| f.sync_all())
        .map_err(|e| fail("fsync after delete", &e))?;

    // 7. The space comes back: a quarter of what fitted (of the host, if write(2) took more),
    //    written and fsynced.
    let fitted = written.min(a.host_mib * MIB);
    let want = rng.bytes((fitted / 4).max(MIB) as usize);
    let again = d.join("again");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&again)
            .and_then(|mut f| f.write_all(&want).and_then(|()| f.sync_all()));
        match r {
            Ok(()) => break,
            Err(e) if errno(&e) == Some(libc::ENOSPC) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => {
                return Err(Fail {
                    msg: format!(
                        "writing {} bytes after deleting everything: {e}",
                        want.len()
                    ),
                    ..fail("write again", &e)
                })
            }
        }
    }
    let got = fs::read(&again).map_err(|e| fail("read again", &e))?;
    if got != want {
        return Err(mismatch(
            "the file written after the deletes reads back wrong",
        ));
    }
    fs::write(d.join("again.hash"), hex(Some(hash(&want)))).map_err(|e| fail("write hash", &e))?;
    println!(
        "after deleting: wrote and read back {} MiB",
        want.len() as u64 / MIB
    );
    Ok(())
}

pub fn check(a: &CheckArgs) -> Res {
    let text = fs::read_to_string(a.dir.join("again.hash")).map_err(|e| Fail {
        code: IO,
        msg: format!("again.hash: {e}"),
    })?;
    let want = parse_hex(text.trim()).map_err(usage)?;
    let got = fs::read(a.dir.join("again")).map_err(|e| io_fail("read again", &e, &a.dir))?;
    if Some(hash(&got)) != want {
        return Err(mismatch(
            "after remount, the file written after the deletes differs",
        ));
    }
    println!("fill-check: {} bytes as written", got.len());
    Ok(())
}
