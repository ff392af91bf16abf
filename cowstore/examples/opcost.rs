//! Rough per-operation cost of the store API (no FUSE): create+getattr+unlink, and 4 KiB and
//! 1 MiB writes. A quick look for the profile; benchmarks proper live in benches/.
use cowstore::*;
use std::time::Instant;

fn main() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("opcost-{}", std::process::id()));
    Store::mkfs(&dir, &MkfsOptions::default())?;
    let s = Store::open(
        &dir,
        &OpenOptions {
            commit_interval: None,
            ..Default::default()
        },
    )?;
    let me = Caller { uid: 0, gid: 0 };
    let reg = NewInode::regular(0o644);
    let n = 5000;
    let t = Instant::now();
    for i in 0..n {
        let a = s.create(InodeNo::ROOT, format!("f{i}").as_bytes(), &reg, me)?;
        s.getattr(a.ino)?;
    }
    for i in 0..n {
        s.unlink(InodeNo::ROOT, format!("f{i}").as_bytes())?;
    }
    s.commit()?;
    println!(
        "create+getattr+unlink: {:.1} us/file",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    let f = s.create(InodeNo::ROOT, b"big", &reg, me)?.ino;
    let buf = vec![7u8; 1 << 20];
    let t = Instant::now();
    for i in 0..512u64 {
        s.write(f, i << 20, &buf)?;
    }
    s.commit()?;
    let el = t.elapsed().as_secs_f64();
    println!(
        "sequential 1 MiB writes: {:.0} MiB/s (512 MiB incl. commit)",
        512.0 / el
    );
    let t = Instant::now();
    let small = &buf[..4096];
    let mut x = 12345u64;
    for _ in 0..20000 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        s.write(f, (x >> 20) % (512 << 8) * 4096, small)?;
    }
    s.commit()?;
    println!(
        "random 4 KiB overwrites: {:.1} us/write",
        t.elapsed().as_secs_f64() * 1e6 / 20000.0
    );
    let t = Instant::now();
    for i in 0..20000u64 {
        let _ = s.read(f, (i * 7919 % (512 << 8)) * 4096, 4096)?;
    }
    println!(
        "read segments 4 KiB: {:.1} us/read",
        t.elapsed().as_secs_f64() * 1e6 / 20000.0
    );
    println!("extents after random writes: {}", s.extents(f)?.len());
    s.close()?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
