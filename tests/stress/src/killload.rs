//! The kill-test workload and its verifier.
//!
//! The workload works on a fixed set of names (`a/f0`.., `b/f0`..) under DIR and appends to a
//! log outside the mount, one line per event, each with one write(2):
//!
//! - `M name`       written *before* an operation that may change `name` starts;
//! - `C name hash`  written after it returned: the content `name` now has (`-`: absent);
//! - `F`            written after an fsync, fdatasync or fsync of a directory *returned*.
//!
//! In cowfs every fsync commits the whole store (design §3: the commit makes every change so
//! far durable), so at an `F` everything that completed before it is durable. Hence the rule
//! the verifier applies after SIGKILL: a name with no `M` after the last `F` must be exactly as
//! its last `C` says (content hash, or absent); a name modified after the last `F` may hold any
//! state and is only read (it must not give an I/O error). An `F` lost because the workload was
//! killed between fsync and the log write only makes the check weaker, never wrong.

use crate::util::{
    compare, cp, hash, hex, io_fail, log_line, mismatch, parse_hex, read_at_exact, usage,
    write_into, write_range, Fail, Res, Rng, IO,
};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const DIRS: [&str; 2] = ["a", "b"];
/// No file grows beyond this, so the model stays small.
const MAX_SIZE: u64 = 2 << 20;

#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Directory inside the mount to work in (created if missing).
    #[arg(long)]
    dir: PathBuf,
    /// Log file outside the mount (appended to).
    #[arg(long)]
    log: PathBuf,
    #[arg(long)]
    seed: u64,
    /// Names per subdirectory.
    #[arg(long, default_value_t = 8)]
    names: usize,
    /// Stop after this many operations (default: run until killed or the mount goes away).
    #[arg(long)]
    ops: Option<u64>,
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    #[arg(long)]
    dir: PathBuf,
    #[arg(long)]
    log: PathBuf,
    /// The mount was unmounted cleanly after the workload ended: everything logged is durable.
    #[arg(long)]
    clean: bool,
}

fn universe(n: usize) -> Vec<String> {
    DIRS.iter()
        .flat_map(|d| (0..n).map(move |i| format!("{d}/f{i}")))
        .collect()
}

struct Load<'a> {
    dir: &'a Path,
    log: File,
    rng: Rng,
    names: Vec<String>,
    model: BTreeMap<String, Vec<u8>>,
    counts: BTreeMap<&'static str, u64>,
}

impl Load<'_> {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn fail(&self, what: String, e: &io::Error) -> Fail {
        io_fail(what, e, self.dir)
    }

    fn pick_any(&mut self) -> String {
        let i = self.rng.below(self.names.len() as u64) as usize;
        self.names[i].clone()
    }

    fn pick_live(&mut self) -> Option<String> {
        if self.model.is_empty() {
            return None;
        }
        let i = self.rng.below(self.model.len() as u64) as usize;
        self.model.keys().nth(i).cloned()
    }

    fn log(&mut self, line: &str) -> Res {
        log_line(&mut self.log, line)
    }

    fn changed(&mut self, name: &str) -> Res {
        let h = self.model.get(name).map(|m| hash(m));
        self.log(&format!("C {name} {}", hex(h)))
    }

    fn count(&mut self, op: &'static str) {
        *self.counts.entry(op).or_default() += 1;
    }

    fn write(&mut self) -> Res {
        let name = self.pick_any();
        let size = self.model.get(&name).map_or(0, |m| m.len() as u64);
        let (off, len) = write_range(&mut self.rng, size, MAX_SIZE);
        let data = self.rng.bytes(len as usize);
        self.log(&format!("M {name}"))?;
        let p = self.path(&name);
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&p)
            .map_err(|e| self.fail(format!("open {}", p.display()), &e))?;
        f.write_all_at(&data, off)
            .map_err(|e| self.fail(format!("write {}", p.display()), &e))?;
        write_into(self.model.entry(name.clone()).or_default(), off, &data);
        self.count("write");
        self.changed(&name)
    }

    fn truncate(&mut self) -> Res {
        let Some(name) = self.pick_live() else {
            return Ok(());
        };
        let size = self.model.get(&name).map_or(0, |m| m.len() as u64);
        let new = self.rng.below((size * 2).clamp(4096, MAX_SIZE));
        self.log(&format!("M {name}"))?;
        let p = self.path(&name);
        let f = OpenOptions::new()
            .write(true)
            .open(&p)
            .map_err(|e| self.fail(format!("open {}", p.display()), &e))?;
        f.set_len(new)
            .map_err(|e| self.fail(format!("truncate {}", p.display()), &e))?;
        if let Some(m) = self.model.get_mut(&name) {
            m.resize(new as usize, 0);
        }
        self.count("truncate");
        self.changed(&name)
    }

    fn clone_file(&mut self) -> Res {
        let Some(src) = self.pick_live() else {
            return Ok(());
        };
        let dst = self.pick_any();
        if dst == src {
            return Ok(());
        }
        self.log(&format!("M {dst}"))?;
        let (ps, pd) = (self.path(&src), self.path(&dst));
        cp(&ps, &pd).map_err(|e| self.fail(format!("cp {src} {dst}"), &e))?;
        let content = self.model.get(&src).cloned().unwrap_or_default();
        self.model.insert(dst.clone(), content);
        self.count("clone");
        self.changed(&dst)
    }

    fn rename(&mut self) -> Res {
        let Some(src) = self.pick_live() else {
            return Ok(());
        };
        let dst = self.pick_any();
        if dst == src {
            return Ok(());
        }
        self.log(&format!("M {src}"))?;
        self.log(&format!("M {dst}"))?;
        let (ps, pd) = (self.path(&src), self.path(&dst));
        fs::rename(&ps, &pd).map_err(|e| self.fail(format!("rename {src} {dst}"), &e))?;
        if let Some(m) = self.model.remove(&src) {
            self.model.insert(dst.clone(), m);
        }
        self.count("rename");
        self.changed(&src)?;
        self.changed(&dst)
    }

    fn unlink(&mut self) -> Res {
        let Some(name) = self.pick_live() else {
            return Ok(());
        };
        self.log(&format!("M {name}"))?;
        let p = self.path(&name);
        fs::remove_file(&p).map_err(|e| self.fail(format!("unlink {name}"), &e))?;
        self.model.remove(&name);
        self.count("unlink");
        self.changed(&name)
    }

    /// fsync, fdatasync, or fsync of a directory; logs `F` once it returned.
    fn sync(&mut self, kind: u64) -> Res {
        let (p, what) = match (kind, self.pick_live()) {
            (0, Some(n)) => (self.path(&n), "fsync"),
            (1, Some(n)) => (self.path(&n), "fdatasync"),
            _ => {
                let d = DIRS[self.rng.below(2) as usize];
                (self.dir.join(d), "fsyncdir")
            }
        };
        let f = File::open(&p).map_err(|e| self.fail(format!("open {}", p.display()), &e))?;
        let r = if what == "fdatasync" {
            f.sync_data()
        } else {
            f.sync_all()
        };
        r.map_err(|e| self.fail(format!("{what} {}", p.display()), &e))?;
        self.count(what);
        self.log("F")
    }

    fn check(&mut self) -> Res {
        let Some(name) = self.pick_live() else {
            return Ok(());
        };
        let p = self.path(&name);
        let got = fs::read(&p).map_err(|e| self.fail(format!("read {name}"), &e))?;
        self.count("read");
        let want = self.model.get(&name).map(Vec::as_slice).unwrap_or_default();
        compare(&format!("{} (live read)", p.display()), &got, want)
    }

    fn step(&mut self) -> Res {
        match self.rng.below(100) {
            0..=34 => self.write(),
            35..=39 => self.truncate(),
            40..=51 => self.clone_file(),
            52..=61 => self.rename(),
            62..=66 => self.unlink(),
            67..=80 => self.sync(0),
            81..=84 => self.sync(1),
            85..=87 => self.sync(2),
            _ => self.check(),
        }
    }
}

pub fn load(a: &LoadArgs) -> Res {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&a.log)
        .map_err(|e| usage(format!("{}: {e}", a.log.display())))?;
    for d in DIRS {
        let p = a.dir.join(d);
        fs::create_dir_all(&p)
            .map_err(|e| io_fail(format!("mkdir {}", p.display()), &e, &a.dir))?;
    }
    let mut l = Load {
        dir: &a.dir,
        log,
        rng: Rng::new(a.seed),
        names: universe(a.names),
        model: BTreeMap::new(),
        counts: BTreeMap::new(),
    };
    // The state left by earlier rounds is the committed one the store opened at: read it as the
    // model, log it, and make it the first durable point.
    l.log(&format!("# killload seed {}", a.seed))?;
    for name in l.names.clone() {
        let p = l.path(&name);
        match fs::read(&p) {
            Ok(data) => {
                l.model.insert(name.clone(), data);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(l.fail(format!("read {}", p.display()), &e)),
        }
        l.changed(&name)?;
    }
    let root = File::open(a.dir.as_path())
        .and_then(|f| f.sync_all())
        .map_err(|e| l.fail("fsync of the work directory".into(), &e));
    root?;
    l.log("F")?;
    let mut done = 0u64;
    while a.ops.is_none_or(|n| done < n) {
        l.step()?;
        done += 1;
    }
    let counts: Vec<String> = l.counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!("killload: {done} operations ({})", counts.join(", "));
    Ok(())
}

pub fn verify(a: &VerifyArgs) -> Res {
    let text =
        fs::read_to_string(&a.log).map_err(|e| usage(format!("{}: {e}", a.log.display())))?;
    let mut state: BTreeMap<String, Option<u64>> = BTreeMap::new();
    let mut dirty: BTreeSet<String> = BTreeSet::new();
    let mut fsyncs = 0u64;
    for (i, line) in text.lines().enumerate() {
        let bad = || usage(format!("{}:{}: bad line {line:?}", a.log.display(), i + 1));
        let mut w = line.split(' ');
        match (w.next(), w.next(), w.next()) {
            (Some("#"), ..) => {}
            (Some("M"), Some(n), None) => {
                dirty.insert(n.to_string());
            }
            (Some("C"), Some(n), Some(h)) => {
                state.insert(n.to_string(), parse_hex(h).map_err(|_| bad())?);
            }
            (Some("F"), None, None) => {
                fsyncs += 1;
                dirty.clear();
            }
            // A line cut short by SIGKILL of the workload can only be the last one.
            _ if i + 1 == text.lines().count() && !text.ends_with('\n') => {}
            _ => return Err(bad()),
        }
    }
    if fsyncs < 2 {
        return Err(usage(format!(
            "{}: only {fsyncs} fsync(s) logged: the workload did not get going before the kill",
            a.log.display()
        )));
    }
    if a.clean {
        dirty.clear();
    }
    let (mut present, mut absent, mut unsure) = (0, 0, 0);
    for (name, want) in &state {
        let p = a.dir.join(name);
        let got = match fs::read(&p) {
            Ok(d) => Some(d),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_fail(format!("read {}", p.display()), &e, &a.dir)),
        };
        if dirty.contains(name) {
            unsure += 1;
            continue;
        }
        match (want, &got) {
            (None, None) => absent += 1,
            (Some(h), Some(d)) if hash(d) == *h => present += 1,
            (None, Some(d)) => {
                return Err(mismatch(format!(
                    "{}: exists ({} bytes) but was logged absent at the last fsync",
                    p.display(),
                    d.len()
                )))
            }
            (Some(_), None) => {
                return Err(mismatch(format!(
                    "{}: missing, but its content was logged before the last fsync",
                    p.display()
                )))
            }
            (Some(h), Some(d)) => {
                return Err(mismatch(format!(
                    "{}: content hash {} ({} bytes) is not the fsynced {}",
                    p.display(),
                    hex(Some(hash(d))),
                    d.len(),
                    hex(Some(*h))
                )))
            }
        }
    }
    // Nothing but the workload's names may exist.
    for d in DIRS {
        let dir = a.dir.join(d);
        let entries = fs::read_dir(&dir).map_err(|e| io_fail(dir.display(), &e, &a.dir))?;
        for e in entries {
            let e = e.map_err(|e| io_fail(dir.display(), &e, &a.dir))?;
            let name = format!("{d}/{}", e.file_name().to_string_lossy());
            if !state.contains_key(&name) {
                return Err(mismatch(format!(
                    "unexpected file {name} in {}",
                    a.dir.display()
                )));
            }
        }
    }
    // Every file reads back whole without an I/O error, even those in an unknown state.
    for name in state.keys() {
        let p = a.dir.join(name);
        if let Ok(f) = File::open(&p) {
            let len = f.metadata().map_or(0, |m| m.len());
            read_at_exact(&f, 0, len as usize).map_err(|e| Fail {
                code: IO,
                msg: format!("read {}: {e}", p.display()),
            })?;
        }
    }
    println!(
        "killverify: {fsyncs} fsyncs logged; {present} files exact and {absent} names absent as \
         at the last fsync; {unsure} modified after it (read back without error)"
    );
    Ok(())
}
