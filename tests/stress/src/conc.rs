//! Concurrent workers. Worker I of N owns private files `pI` (written in place), `cI` (a `cp`
//! of `pI`, then written), `rI` (replaced by rename), `sI` (a `cp` of a shared file) and one
//! region of each shared file `shared0`, `shared1`: bytes I*REGION..(I+1)*REGION. REGION is not
//! a multiple of the block size, so neighbours' regions meet inside a block and their writes
//! race on the same block's copy-on-write. Every worker also reads and clones the others'
//! files, whose content it cannot know, and must get no error.
//!
//! A worker checks everything it can know after each step (its files, its regions, in the
//! originals and in the clones, which must not see each other's later writes) and at the end
//! writes a manifest of those states; `conc-check` verifies the manifests (again after a
//! remount).

use crate::util::{
    compare, cp, errno, hash, hex, io_fail, mismatch, parse_hex, read_at_exact, usage, write_into,
    write_range, Fail, Res, Rng,
};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// 3 blocks and a bit: region edges fall inside blocks.
const REGION: u64 = 3 * 4096 + 1000;
const SHARED: [&str; 2] = ["shared0", "shared1"];
const PRIVATE_MAX: u64 = 1 << 20;

#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    #[arg(long)]
    dir: PathBuf,
    #[arg(long)]
    id: u64,
    #[arg(long)]
    workers: u64,
    #[arg(long)]
    secs: u64,
    #[arg(long)]
    seed: u64,
    /// Where to write the final manifest (outside the mount).
    #[arg(long)]
    manifest: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    #[arg(long)]
    dir: PathBuf,
    /// Manifests written by the workers.
    manifests: Vec<PathBuf>,
}

struct Worker<'a> {
    a: &'a WorkerArgs,
    rng: Rng,
    /// Own region of each shared file.
    shared: [Vec<u8>; 2],
    /// Own region of `sI` (a clone of shared file k), if made.
    snap: Option<(usize, Vec<u8>)>,
    private: Vec<u8>,
    clone: Option<Vec<u8>>,
    renamed: Option<Vec<u8>>,
    counts: BTreeMap<&'static str, u64>,
}

impl Worker<'_> {
    fn p(&self, name: &str) -> PathBuf {
        self.a.dir.join(name)
    }

    fn own(&self, kind: &str) -> PathBuf {
        self.p(&format!("{kind}{}", self.a.id))
    }

    fn base(&self) -> u64 {
        self.a.id * REGION
    }

    fn fail(&self, what: impl std::fmt::Display, e: &io::Error) -> Fail {
        io_fail(format!("worker {}: {what}", self.a.id), e, &self.a.dir)
    }

    fn count(&mut self, op: &'static str) {
        *self.counts.entry(op).or_default() += 1;
    }

    fn open_rw(&self, p: &Path) -> Res<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(p)
            .map_err(|e| self.fail(format!("open {}", p.display()), &e))
    }

    fn check_region(&self, p: &Path, want: &[u8]) -> Res {
        let read = || -> io::Result<Vec<u8>> {
            read_at_exact(&File::open(p)?, self.base(), REGION as usize)
        };
        let got = read().map_err(|e| self.fail(format!("read {}", p.display()), &e))?;
        let what = format!("worker {}: own region of {}", self.a.id, p.display());
        compare(&what, &got, want).map_err(|f| self.triage(f, p, want, read))
    }

    fn check_whole(&self, p: &Path, want: &[u8]) -> Res {
        let read = || fs::read(p);
        let got = read().map_err(|e| self.fail(format!("read {}", p.display()), &e))?;
        let what = format!("worker {}: {}", self.a.id, p.display());
        compare(&what, &got, want).map_err(|f| self.triage(f, p, want, read))
    }

    /// After a mismatch: drop the file's page cache and read again, so the report says whether
    /// the daemon holds the wrong bytes or only the kernel's cache did.
    fn triage(
        &self,
        mut f: Fail,
        p: &Path,
        want: &[u8],
        read: impl Fn() -> io::Result<Vec<u8>>,
    ) -> Fail {
        let dropped = File::open(p).and_then(|file| {
            use std::os::fd::AsRawFd;
            // SAFETY: posix_fadvise only reads its arguments; the descriptor is open.
            let rc =
                unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            if rc == 0 {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(rc))
            }
        });
        let again = dropped.and_then(|()| read());
        f.msg += &match again {
            Ok(d) if d == want => "; read again after dropping the page cache: as the model \
                (only the kernel's cache was stale)"
                .to_string(),
            Ok(_) => "; read again after dropping the page cache: still differs (the daemon \
                holds the wrong bytes)"
                .to_string(),
            Err(e) => format!("; read again after dropping the page cache failed: {e}"),
        };
        f
    }

    /// Write a random part of the own region of a shared file (or of the clone `sI`).
    fn write_region(&mut self, p: &Path, model: &mut [u8]) -> Res {
        let off = self.rng.below(REGION);
        let len = 1 + self.rng.below(REGION - off);
        let data = self.rng.bytes(len as usize);
        let f = self.open_rw(p)?;
        f.write_all_at(&data, self.base() + off)
            .map_err(|e| self.fail(format!("write {}", p.display()), &e))?;
        model[off as usize..(off + len) as usize].copy_from_slice(&data);
        self.check_region(p, model)
    }

    fn shared_write(&mut self) -> Res {
        let k = self.rng.below(2) as usize;
        let p = self.p(SHARED[k]);
        let mut m = std::mem::take(&mut self.shared[k]);
        let r = self.write_region(&p, &mut m);
        self.shared[k] = m;
        self.count("shared-write");
        r
    }

    fn shared_check(&mut self) -> Res {
        let k = self.rng.below(2) as usize;
        self.count("shared-read");
        self.check_region(&self.p(SHARED[k]), &self.shared[k])
    }

    /// `cp sharedK sI`, check the own region in the clone, write it, and check that the
    /// original did not see that write.
    fn shared_clone(&mut self) -> Res {
        let k = self.rng.below(2) as usize;
        let (src, dst) = (self.p(SHARED[k]), self.own("s"));
        cp(&src, &dst).map_err(|e| self.fail(format!("cp {}", src.display()), &e))?;
        let mut m = self.shared[k].clone();
        self.check_region(&dst, &m)?;
        self.write_region(&dst, &mut m)?;
        self.snap = Some((k, m));
        self.count("shared-clone");
        self.check_region(&src, &self.shared[k])
    }

    fn private_write(&mut self) -> Res {
        let p = self.own("p");
        let (off, len) = write_range(&mut self.rng, self.private.len() as u64, PRIVATE_MAX);
        let data = self.rng.bytes(len as usize);
        let f = self.open_rw(&p)?;
        f.write_all_at(&data, off)
            .map_err(|e| self.fail(format!("write {}", p.display()), &e))?;
        write_into(&mut self.private, off, &data);
        self.count("private-write");
        self.check_whole(&p, &self.private)
    }

    /// `cp pI cI`, then write into the clone: both must keep their own content.
    fn private_clone(&mut self) -> Res {
        let (src, dst) = (self.own("p"), self.own("c"));
        cp(&src, &dst).map_err(|e| self.fail(format!("cp {}", src.display()), &e))?;
        let mut m = self.private.clone();
        self.check_whole(&dst, &m)?;
        let (off, len) = write_range(&mut self.rng, m.len() as u64, PRIVATE_MAX);
        let data = self.rng.bytes(len as usize);
        let f = self.open_rw(&dst)?;
        f.write_all_at(&data, off)
            .map_err(|e| self.fail(format!("write {}", dst.display()), &e))?;
        write_into(&mut m, off, &data);
        self.check_whole(&dst, &m)?;
        self.clone = Some(m);
        self.count("private-clone");
        self.check_whole(&src, &self.private)
    }

    /// Write a temp file, fsync it and rename it over `rI`.
    fn replace(&mut self) -> Res {
        let (tmp, dst) = (self.own("t"), self.own("r"));
        let len = self.rng.below(300_000);
        let data = self.rng.bytes(len as usize);
        let f =
            File::create(&tmp).map_err(|e| self.fail(format!("create {}", tmp.display()), &e))?;
        f.write_all_at(&data, 0)
            .and_then(|()| f.sync_all())
            .map_err(|e| self.fail(format!("write+fsync {}", tmp.display()), &e))?;
        drop(f);
        fs::rename(&tmp, &dst)
            .map_err(|e| self.fail(format!("rename to {}", dst.display()), &e))?;
        self.renamed = Some(data);
        self.count("replace");
        self.check_whole(&dst, self.renamed.as_deref().unwrap_or_default())
    }

    fn other(&mut self) -> u64 {
        let j = self.rng.below(self.a.workers.max(2) - 1);
        if j >= self.a.id {
            j + 1
        } else {
            j
        }
    }

    /// Read the others' files whole: content unknown, but no error other than "not yet made".
    fn read_others(&mut self) -> Res {
        let j = self.other();
        let mut names: Vec<String> = ["p", "c", "r", "s"]
            .iter()
            .map(|k| format!("{k}{j}"))
            .collect();
        names.extend(SHARED.iter().map(|s| s.to_string()));
        for n in names {
            let p = self.p(&n);
            match fs::read(&p) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.fail(format!("read {}", p.display()), &e)),
            }
        }
        self.count("read-others");
        Ok(())
    }

    /// `cp` another worker's file while that worker may be writing it.
    fn clone_others(&mut self) -> Res {
        let j = self.other();
        let kind = ["p", "c", "r"][self.rng.below(3) as usize];
        let (src, dst) = (self.p(&format!("{kind}{j}")), self.own("x"));
        match cp(&src, &dst) {
            Ok(()) => {}
            // `cI` is unlinked now and then, `rI` not yet made.
            Err(e) if errno(&e) == Some(libc::ENOENT) => return Ok(()),
            // `rI` is replaced by rename: coreutils notices and refuses (by design).
            Err(e)
                if e.to_string()
                    .contains("as it was replaced while being copied") =>
            {
                return Ok(())
            }
            Err(e) => return Err(self.fail(format!("cp {}", src.display()), &e)),
        }
        fs::read(&dst).map_err(|e| self.fail(format!("read {}", dst.display()), &e))?;
        self.count("clone-others");
        Ok(())
    }

    fn fsync(&mut self) -> Res {
        let p = match self.rng.below(3) {
            0 => self.own("p"),
            1 => {
                let k = self.rng.below(2) as usize;
                self.p(SHARED[k])
            }
            _ => self.a.dir.clone(),
        };
        File::open(&p)
            .and_then(|f| f.sync_all())
            .map_err(|e| self.fail(format!("fsync {}", p.display()), &e))?;
        self.count("fsync");
        Ok(())
    }

    fn unlink_clone(&mut self) -> Res {
        if self.clone.take().is_some() {
            let p = self.own("c");
            fs::remove_file(&p).map_err(|e| self.fail(format!("unlink {}", p.display()), &e))?;
            self.count("unlink");
        }
        Ok(())
    }

    fn step(&mut self) -> Res {
        match self.rng.below(100) {
            0..=21 => self.shared_write(),
            22..=29 => self.shared_check(),
            30..=39 => self.shared_clone(),
            40..=54 => self.private_write(),
            55..=64 => self.private_clone(),
            65..=71 => self.replace(),
            72..=81 => self.read_others(),
            82..=89 => self.clone_others(),
            90..=95 => self.fsync(),
            _ => self.unlink_clone(),
        }
    }

    fn manifest(&self) -> String {
        let mut m = String::new();
        let id = self.a.id;
        let _ = writeln!(m, "file p{id} {}", hex(Some(hash(&self.private))));
        let _ = writeln!(m, "file c{id} {}", hex(self.clone.as_deref().map(hash)));
        let _ = writeln!(m, "file r{id} {}", hex(self.renamed.as_deref().map(hash)));
        for (k, s) in SHARED.iter().enumerate() {
            let _ = writeln!(
                m,
                "region {s} {} {}",
                self.base(),
                hex(Some(hash(&self.shared[k])))
            );
        }
        if let Some((_, r)) = &self.snap {
            let _ = writeln!(m, "region s{id} {} {}", self.base(), hex(Some(hash(r))));
        }
        m
    }
}

pub fn worker(a: &WorkerArgs) -> Res {
    if a.id >= a.workers || a.workers < 2 {
        return Err(usage("need --workers >= 2 and --id < --workers"));
    }
    let mut w = Worker {
        a,
        rng: Rng::new(a.seed.wrapping_mul(1000).wrapping_add(a.id)),
        shared: [vec![0; REGION as usize], vec![0; REGION as usize]],
        snap: None,
        private: Vec::new(),
        clone: None,
        renamed: None,
        counts: BTreeMap::new(),
    };
    // Give each own region a first content (the shared files grow as workers start).
    for (k, name) in SHARED.iter().enumerate() {
        let p = w.p(name);
        let data = w.rng.bytes(REGION as usize);
        let f = w.open_rw(&p)?;
        f.write_all_at(&data, w.base())
            .map_err(|e| w.fail(format!("write {}", p.display()), &e))?;
        w.shared[k] = data;
    }
    File::create(w.own("p")).map_err(|e| w.fail("create", &e))?;
    let deadline = Instant::now() + Duration::from_secs(a.secs);
    let mut ops = 0u64;
    while Instant::now() < deadline {
        w.step()?;
        ops += 1;
    }
    fs::write(&a.manifest, w.manifest())
        .map_err(|e| usage(format!("{}: {e}", a.manifest.display())))?;
    let counts: Vec<String> = w.counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!("worker {}: {ops} operations ({})", a.id, counts.join(", "));
    Ok(())
}

pub fn check(a: &CheckArgs) -> Res {
    let mut checked = 0;
    for m in &a.manifests {
        let text = fs::read_to_string(m).map_err(|e| usage(format!("{}: {e}", m.display())))?;
        for line in text.lines() {
            let w: Vec<&str> = line.split(' ').collect();
            let bad = || usage(format!("{}: bad line {line:?}", m.display()));
            let (p, got, want) = match w.as_slice() {
                ["file", name, h] => {
                    let p = a.dir.join(name);
                    let got = match fs::read(&p) {
                        Ok(d) => Some(hash(&d)),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                        Err(e) => return Err(io_fail(p.display(), &e, &a.dir)),
                    };
                    (p, got, parse_hex(h).map_err(|_| bad())?)
                }
                ["region", name, off, h] => {
                    let p = a.dir.join(name);
                    let off: u64 = off.parse().map_err(|_| bad())?;
                    let d = File::open(&p)
                        .and_then(|f| read_at_exact(&f, off, REGION as usize))
                        .map_err(|e| io_fail(p.display(), &e, &a.dir))?;
                    (p, Some(hash(&d)), parse_hex(h).map_err(|_| bad())?)
                }
                _ => return Err(bad()),
            };
            if got != want {
                return Err(mismatch(format!(
                    "{} ({line}): has {}, the worker's last state was {}",
                    p.display(),
                    hex(got),
                    hex(want)
                )));
            }
            checked += 1;
        }
    }
    println!("conc-check: {checked} files and regions as the workers left them");
    Ok(())
}
