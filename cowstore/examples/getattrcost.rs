//! Cost of the cheapest store call (getattr) and of a 4 KiB read lookup: shows the fixed cost
//! every operation pays (lock, transaction context) apart from its own B-tree work.
use cowstore::*;
use std::time::Instant;

fn main() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("getattrcost-{}", std::process::id()));
    Store::mkfs(&dir, &MkfsOptions::default())?;
    let s = Store::open(
        &dir,
        &OpenOptions {
            commit_interval: None,
            ..Default::default()
        },
    )?;
    let reg = NewInode::regular(0o644);
    let f = s.create(InodeNo::ROOT, b"f", &reg, Caller::ROOT)?.ino;
    s.write(f, 0, &vec![1u8; 1 << 20])?;
    s.commit()?;
    let n = 200_000;
    let t = Instant::now();
    for _ in 0..n {
        s.getattr(f)?;
    }
    println!(
        "getattr: {:.2} us",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    let t = Instant::now();
    for i in 0..n as u64 {
        let _ = s.read(f, (i % 256) * 4096, 4096)?;
    }
    println!(
        "read 4 KiB lookup: {:.2} us",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    let t = Instant::now();
    for i in 0..20_000u64 {
        let a = s.create(
            InodeNo::ROOT,
            format!("g{i}").as_bytes(),
            &reg,
            Caller::ROOT,
        )?;
        s.release(a.ino)?;
    }
    println!(
        "create: {:.2} us",
        t.elapsed().as_secs_f64() * 1e6 / 20_000.0
    );
    let t = Instant::now();
    for i in 0..20_000u64 {
        s.unlink(InodeNo::ROOT, format!("g{i}").as_bytes())?;
    }
    println!(
        "unlink: {:.2} us",
        t.elapsed().as_secs_f64() * 1e6 / 20_000.0
    );
    s.close()?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
