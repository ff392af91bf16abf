//! How long writers stall while a commit runs: one thread overwrites random 4 KiB blocks of a
//! committed 256 MiB file (every overwrite frees a committed block, so every commit punches
//! thousands of runs), another commits every second. Prints write throughput and the worst
//! and 99.9th-percentile write latency.
use cowstore::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("commitstall-{}", std::process::id()));
    Store::mkfs(&dir, &MkfsOptions::default())?;
    let s = Arc::new(Store::open(
        &dir,
        &OpenOptions {
            commit_interval: None,
            ..Default::default()
        },
    )?);
    let reg = NewInode::regular(0o644);
    let f = s.create(InodeNo::ROOT, b"f", &reg, Caller::ROOT)?.ino;
    let buf = vec![7u8; 1 << 20];
    for i in 0..256u64 {
        s.write(f, i << 20, &buf)?;
    }
    s.commit()?;
    let stop = Arc::new(AtomicBool::new(false));
    let committer = {
        let (s, stop) = (s.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                let _ = s.commit();
            }
        })
    };
    let mut lat = Vec::new();
    let mut x = 12345u64;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(6) {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let w = Instant::now();
        s.write(f, (x >> 20) % (256 << 8) * 4096, &buf[..4096])?;
        lat.push(w.elapsed());
    }
    let el = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = committer.join();
    lat.sort();
    println!(
        "{} writes/s, worst {:.1} ms, p99.9 {:.2} ms, commits {}",
        (lat.len() as f64 / el) as u64,
        lat.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
        lat[lat.len() * 999 / 1000].as_secs_f64() * 1e3,
        s.commit_count()
    );
    drop(s);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
