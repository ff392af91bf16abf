//! Benchmarks of the store on a real directory (under `target/`, so on the same host filesystem
//! as the plain-file baseline):
//! - reflink of a whole 1 GiB file vs a 16 MiB one: the cost must not grow with the file size;
//! - sequential 1 MiB writes into the store, final commit (fsync) included, vs plain `write`s to
//!   a file followed by `fdatasync`;
//! - the store's own cost of a 4 KiB random overwrite of a committed 256 MiB file, and of
//!   creating a small file and writing it (what `tar x` asks per file), with the uncommitted
//!   changes growing between commits as they do in a mount (a commit every 16,384 writes or
//!   4,096 files; the commits are not timed). These count the thread's CPU time, not wall time:
//!   the store's work per operation, steady on a shared machine.

use cowstore::*;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn bench_dir(name: &str) -> tempfile::TempDir {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&base).expect("bench dir");
    tempfile::Builder::new()
        .prefix(name)
        .tempdir_in(base)
        .expect("tempdir")
}

fn open_store(dir: &std::path::Path) -> Store {
    Store::mkfs(dir, &MkfsOptions::default()).expect("mkfs");
    Store::open(
        dir,
        &OpenOptions {
            commit_interval: None,
            ..Default::default()
        },
    )
    .expect("open")
}

fn regular() -> NewInode {
    NewInode::regular(0o644)
}

/// Fill a new file with `size` bytes written 8 MiB at a time, and commit.
fn make_file(s: &Store, name: &str, size: u64) -> InodeNo {
    let ino = s
        .create(InodeNo::ROOT, name.as_bytes(), &regular(), Caller::ROOT)
        .expect("create")
        .ino;
    let chunk: Vec<u8> = (0..8 * MIB).map(|i| (i % 253) as u8 + 1).collect();
    let mut off = 0;
    while off < size {
        let n = (size - off).min(chunk.len() as u64) as usize;
        s.write(ino, off, &chunk[..n]).expect("write");
        off += n as u64;
    }
    s.commit().expect("commit");
    ino
}

fn clone_whole_file(c: &mut Criterion) {
    let dir = bench_dir("clone");
    let s = open_store(dir.path());
    let small = make_file(&s, "small", 16 * MIB);
    let big = make_file(&s, "big", 1024 * MIB);
    let mut g = c.benchmark_group("clone_range_whole_file");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let mut n = 0u64;
    for (label, src) in [("16MiB", small), ("1GiB", big)] {
        g.bench_function(label, |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    n += 1;
                    let name = format!("copy{n}");
                    let dst = s
                        .create(InodeNo::ROOT, name.as_bytes(), &regular(), Caller::ROOT)
                        .expect("create")
                        .ino;
                    let t = Instant::now();
                    let copied = s.clone_range(src, 0, dst, 0, u64::MAX).expect("clone");
                    spent += t.elapsed();
                    assert!(copied >= 16 * MIB);
                    s.unlink(InodeNo::ROOT, name.as_bytes()).expect("unlink");
                }
                s.commit().expect("commit");
                spent
            })
        });
    }
    g.finish();
    drop(s);
}

const WRITE_TOTAL: u64 = 256 * MIB;

fn sequential_write(c: &mut Criterion) {
    let chunk: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8 + 1).collect();
    let mut g = c.benchmark_group("sequential_write_1MiB");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Bytes(WRITE_TOTAL));

    let dir = bench_dir("write");
    let s = open_store(dir.path());
    g.bench_function("store_write_then_commit", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let f = s
                    .create(InodeNo::ROOT, b"seq", &regular(), Caller::ROOT)
                    .expect("create")
                    .ino;
                let mut off = 0;
                while off < WRITE_TOTAL {
                    s.write(f, off, &chunk).expect("write");
                    off += MIB;
                }
                s.commit().expect("commit");
                spent += t.elapsed();
                s.unlink(InodeNo::ROOT, b"seq").expect("unlink");
                s.commit().expect("commit");
            }
            spent
        })
    });
    drop(s);

    let plain = bench_dir("plain");
    let path = plain.path().join("seq");
    g.bench_function("plain_file_write_then_fdatasync", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let mut f = std::fs::File::create(&path).expect("create");
                let mut off = 0;
                while off < WRITE_TOTAL {
                    f.write_all(&chunk).expect("write");
                    off += MIB;
                }
                f.sync_data().expect("fdatasync");
                spent += t.elapsed();
                drop(f);
                std::fs::remove_file(&path).expect("remove");
            }
            spent
        })
    });
    g.finish();
}

/// A small xorshift: the same offsets on every run, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// CPU time of the calling thread: what the store spends, without the waits for the host's
/// disk and the time other processes take from this machine's two CPUs.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Run `op(i)` for each of `iters` iterations, counting the CPU time of the operations only:
/// every `every` iterations the store commits, uncounted.
fn timed_ops(s: &Store, iters: u64, every: u64, mut op: impl FnMut(u64)) -> Duration {
    let mut spent = Duration::ZERO;
    for i in 0..iters {
        let t = thread_cpu();
        op(i);
        spent += thread_cpu() - t;
        if (i + 1) % every == 0 {
            s.commit().expect("commit");
        }
    }
    s.commit().expect("commit");
    spent
}

fn write_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("write_path");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(6));

    let dir = bench_dir("randw");
    let s = open_store(dir.path());
    const FILE: u64 = 256 * MIB;
    let f = make_file(&s, "big", FILE);
    let block = vec![0x5au8; 4096];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    g.bench_function("random_overwrite_4KiB", |b| {
        b.iter_custom(|iters| {
            timed_ops(&s, iters, 16_384, |_| {
                let off = (rng.next() % (FILE / 4096)) * 4096;
                s.write(f, off, &block).expect("write");
            })
        })
    });
    drop(s);

    let dir = bench_dir("files");
    let s = open_store(dir.path());
    let data = vec![0x33u8; 10 * 1024];
    let mut n = 0u64;
    g.bench_function("create_and_write_10KiB", |b| {
        b.iter_custom(|iters| {
            let d = s
                .mkdir(
                    InodeNo::ROOT,
                    format!("d{n}").as_bytes(),
                    0o755,
                    Caller::ROOT,
                )
                .expect("mkdir")
                .ino;
            n += 1;
            timed_ops(&s, iters, 4_096, |i| {
                let ino = s
                    .create(d, format!("f{i}").as_bytes(), &regular(), Caller::ROOT)
                    .expect("create")
                    .ino;
                s.write(ino, 0, &data).expect("write");
            })
        })
    });
    g.finish();
}

criterion_group!(benches, clone_whole_file, sequential_write, write_path);
criterion_main!(benches);
