//! The in-memory, crash-simulating and fault-injecting backend of the I/O seam, for tests only
//! (cowstore's `testing` feature): [`MemEnv`] keeps a store's files in memory and can record every
//! write, truncate, punch and sync; [`DeviceModel`] replays such a log as a device would keep it
//! across a power cut; [`Fault`] makes one chosen I/O call fail.

use super::{Env, FileIo};
use crate::error::{Error, Result};
use parking_lot::{Mutex, MutexGuard};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// One recorded operation on a [`MemEnv`] file.
#[derive(Clone, Debug)]
pub enum MemOp {
    Write {
        file: String,
        off: u64,
        data: Vec<u8>,
    },
    SetLen {
        file: String,
        len: u64,
    },
    Punch {
        file: String,
        off: u64,
        len: u64,
    },
    Sync {
        file: String,
    },
}

impl MemOp {
    pub fn file(&self) -> &str {
        match self {
            MemOp::Write { file, .. }
            | MemOp::SetLen { file, .. }
            | MemOp::Punch { file, .. }
            | MemOp::Sync { file } => file,
        }
    }
}

#[derive(Debug, Default)]
struct MemShared {
    files: BTreeMap<String, Vec<u8>>,
    log: Vec<MemOp>,
    recording: bool,
    locked: bool,
    fail_writes_after: Option<u64>,
    /// The armed one-shot fault, if any.
    fault: Option<Fault>,
    /// Whether the last armed fault has fired.
    fault_fired: bool,
    /// Reads, writes, truncates, punches and syncs so far (what a fault counts).
    io_calls: u64,
}

/// One injected I/O failure: after `after` more I/O calls (on `file`, or on any file), the next
/// one fails with `errno`, once. Reads count as well as writes and syncs.
#[derive(Clone, Debug)]
pub struct Fault {
    pub after: u64,
    pub errno: i32,
    pub file: Option<String>,
    /// Count (and fail) only syncs.
    pub syncs_only: bool,
}

impl MemShared {
    fn tick(&mut self, file: &str, sync: bool) -> io::Result<()> {
        self.io_calls += 1;
        if let Some(f) = &mut self.fault {
            if f.file.as_deref().is_none_or(|n| n == file) && (sync || !f.syncs_only) {
                if f.after == 0 {
                    let errno = f.errno;
                    self.fault = None;
                    self.fault_fired = true;
                    return Err(io::Error::from_raw_os_error(errno));
                }
                f.after -= 1;
            }
        }
        Ok(())
    }
}

/// A store directory held in memory. Clones share the same files.
#[derive(Debug, Clone, Default)]
pub struct MemEnv {
    shared: Arc<Mutex<MemShared>>,
    gate: Arc<SyncGate>,
}

/// Syncs of one file, or its writes of at least some length, held back until released (see
/// [`MemEnv::hold_syncs`], [`MemEnv::hold_writes`]).
#[derive(Debug, Default)]
struct SyncGate {
    /// The file whose syncs wait, and how many syncs have reached the gate since it was set.
    held: parking_lot::Mutex<Option<(String, u64)>>,
    /// The file whose writes of at least this many bytes wait, and how many have arrived.
    held_writes: parking_lot::Mutex<Option<(String, usize, u64)>>,
    changed: parking_lot::Condvar,
}

impl SyncGate {
    /// Wait until the gate `held` (one of this gate's) is released or `reached` says enough
    /// I/O has arrived at it, at most `timeout`; returns whether one of those happened.
    fn wait<T>(
        &self,
        held: &parking_lot::Mutex<Option<T>>,
        reached: impl Fn(&T) -> bool,
        timeout: std::time::Duration,
    ) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut h = held.lock();
        while h.as_ref().is_some_and(|t| !reached(t)) {
            if self.changed.wait_until(&mut h, deadline).timed_out() {
                break;
            }
        }
        h.as_ref().is_none_or(reached)
    }
}

fn lock_mem(m: &Mutex<MemShared>) -> MutexGuard<'_, MemShared> {
    m.lock()
}

impl MemEnv {
    pub fn new() -> MemEnv {
        MemEnv::default()
    }

    /// Start (or stop) recording every write, truncate, punch and sync.
    pub fn set_recording(&self, on: bool) {
        lock_mem(&self.shared).recording = on;
    }

    /// The operations recorded so far.
    pub fn log(&self) -> Vec<MemOp> {
        lock_mem(&self.shared).log.clone()
    }

    /// How many operations have been recorded (without copying the log).
    pub fn log_len(&self) -> usize {
        lock_mem(&self.shared).log.len()
    }

    /// A copy of every file as it is now.
    pub fn files(&self) -> BTreeMap<String, Vec<u8>> {
        lock_mem(&self.shared).files.clone()
    }

    /// A new environment holding exactly these files (and no lock holder).
    pub fn from_files(files: BTreeMap<String, Vec<u8>>) -> MemEnv {
        let env = MemEnv::new();
        lock_mem(&env.shared).files = files;
        env
    }

    /// After `n` more successful writes, every write fails with ENOSPC (fault injection).
    pub fn fail_writes_after(&self, n: Option<u64>) {
        lock_mem(&self.shared).fail_writes_after = n;
    }

    /// Arm a one-shot fault (replacing any armed one); `None` disarms.
    pub fn inject_fault(&self, fault: Option<Fault>) {
        let mut s = lock_mem(&self.shared);
        s.fault = fault;
        s.fault_fired = false;
    }

    /// Whether the fault armed last has fired.
    pub fn fault_fired(&self) -> bool {
        lock_mem(&self.shared).fault_fired
    }

    /// Hold every sync of `file` (e.g. "pool") until [`MemEnv::release_syncs`]: a sync that
    /// arrives waits, outside every other lock of the environment.
    pub fn hold_syncs(&self, file: &str) {
        *self.gate.held.lock() = Some((file.to_string(), 0));
    }

    /// Wait until `n` syncs have reached the gate set by [`MemEnv::hold_syncs`], at most
    /// `timeout`; returns whether they did.
    pub fn wait_held_syncs(&self, n: u64, timeout: std::time::Duration) -> bool {
        self.gate
            .wait(&self.gate.held, |(_, got)| *got >= n, timeout)
    }

    /// Let the held syncs (and all later ones) go on.
    pub fn release_syncs(&self) {
        *self.gate.held.lock() = None;
        self.gate.changed.notify_all();
    }

    /// Hold every write of at least `min_len` bytes to `file` until [`MemEnv::release_writes`]
    /// (a write that arrives waits, outside every other lock of the environment).
    pub fn hold_writes(&self, file: &str, min_len: usize) {
        *self.gate.held_writes.lock() = Some((file.to_string(), min_len, 0));
    }

    /// Wait until `n` writes have reached the gate set by [`MemEnv::hold_writes`], at most
    /// `timeout`; returns whether they did.
    pub fn wait_held_writes(&self, n: u64, timeout: std::time::Duration) -> bool {
        self.gate
            .wait(&self.gate.held_writes, |(_, _, got)| *got >= n, timeout)
    }

    /// Let the held writes (and all later ones) go on.
    pub fn release_writes(&self) {
        *self.gate.held_writes.lock() = None;
        self.gate.changed.notify_all();
    }

    /// I/O calls made on this environment's files so far.
    pub fn io_calls(&self) -> u64 {
        lock_mem(&self.shared).io_calls
    }

    /// Apply one recorded operation to a set of files.
    pub fn apply(files: &mut BTreeMap<String, Vec<u8>>, op: &MemOp) {
        match op {
            MemOp::Write { file, off, data } => {
                let f = files.entry(file.clone()).or_default();
                let end = *off as usize + data.len();
                if f.len() < end {
                    f.resize(end, 0);
                }
                f[*off as usize..end].copy_from_slice(data);
            }
            MemOp::SetLen { file, len } => files
                .entry(file.clone())
                .or_default()
                .resize(*len as usize, 0),
            MemOp::Punch { file, off, len } => {
                let f = files.entry(file.clone()).or_default();
                let start = (*off as usize).min(f.len());
                let end = (*off as usize + *len as usize).min(f.len());
                f[start..end].fill(0);
            }
            MemOp::Sync { .. } => {}
        }
    }

    /// Apply what a power cut kept of one operation: nothing, all of it, (a torn write) only the
    /// chosen sectors, or only the size a write gave its file. A torn write changes exactly the
    /// bytes of its chosen sectors and grows the file only as far as they reach; the rest of the
    /// file keeps its old bytes. Truncates and punches are atomic: `Persist::Sectors` and
    /// `Persist::SizeOnly` apply them whole unless `Sectors` chooses nothing.
    pub fn apply_persist(files: &mut BTreeMap<String, Vec<u8>>, op: &MemOp, keep: &Persist) {
        match (keep, op) {
            (Persist::Lost, _) => {}
            (Persist::Whole, _) => MemEnv::apply(files, op),
            (Persist::SizeOnly, MemOp::Write { file, off, data }) => {
                let f = files.entry(file.clone()).or_default();
                let end = *off as usize + data.len();
                if f.len() < end {
                    f.resize(end, 0);
                }
            }
            (Persist::SizeOnly, _) => MemEnv::apply(files, op),
            (Persist::Sectors(chosen), MemOp::Write { file, off, data }) => {
                let pieces = op.sectors();
                for &i in chosen {
                    let Some(&(start, end)) = pieces.get(i) else {
                        continue;
                    };
                    let from = (start - off) as usize;
                    let to = (end - off) as usize;
                    let f = files.entry(file.clone()).or_default();
                    if f.len() < end as usize {
                        f.resize(end as usize, 0);
                    }
                    f[start as usize..end as usize].copy_from_slice(&data[from..to]);
                }
            }
            (Persist::Sectors(chosen), _) => {
                if !chosen.is_empty() {
                    MemEnv::apply(files, op);
                }
            }
        }
    }
}

/// The unit a device writes atomically. A power cut may tear a write at these boundaries (of the
/// file's offsets): some of its sectors land, others keep their old bytes.
pub const SECTOR: u64 = 512;

impl MemOp {
    /// The byte ranges `[start, end)` of the sectors a write touches, in order (the first and
    /// last may be partial when the write is unaligned). Other operations have none.
    pub fn sectors(&self) -> Vec<(u64, u64)> {
        let MemOp::Write { off, data, .. } = self else {
            return Vec::new();
        };
        let end = off + data.len() as u64;
        let mut out = Vec::new();
        let mut pos = *off;
        while pos < end {
            let next = ((pos / SECTOR) + 1) * SECTOR;
            out.push((pos, next.min(end)));
            pos = next;
        }
        out
    }
}

/// What a power cut keeps of one volatile operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Persist {
    Lost,
    Whole,
    /// Only these sectors of a write (indices into [`MemOp::sectors`]).
    Sectors(Vec<usize>),
    /// A write's new file size but none of its bytes (the size update reached the disk before
    /// the data: the new part of the file reads as zeros).
    SizeOnly,
}

/// The device a crash test assumes, replayed over a recorded log: each file's operations up to
/// its own last sync are durable; those after it are volatile, and a power cut may keep any
/// subset of them, each whole or torn at [`SECTOR`] boundaries. A sync of one file makes nothing
/// of another file durable.
#[derive(Clone, Debug)]
pub struct DeviceModel {
    durable: BTreeMap<String, Vec<u8>>,
    /// Operations not yet made durable by a sync of their file, with their index in the log.
    volatile: Vec<(usize, MemOp)>,
    cut: usize,
}

impl DeviceModel {
    /// Start from files that are all durable (e.g. as mkfs left them, before recording began).
    pub fn new(base: BTreeMap<String, Vec<u8>>) -> DeviceModel {
        DeviceModel {
            durable: base,
            volatile: Vec::new(),
            cut: 0,
        }
    }

    /// Take the next operation of the log.
    pub fn step(&mut self, op: &MemOp) {
        if let MemOp::Sync { file } = op {
            let (synced, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.volatile)
                .into_iter()
                .partition(|(_, o)| o.file() == file);
            for (_, o) in &synced {
                MemEnv::apply(&mut self.durable, o);
            }
            self.volatile = rest;
        } else {
            self.volatile.push((self.cut, op.clone()));
        }
        self.cut += 1;
    }

    /// How many operations of the log have been taken: the power cut falls after them.
    pub fn cut(&self) -> usize {
        self.cut
    }

    /// The files as the syncs so far made them durable.
    pub fn durable(&self) -> &BTreeMap<String, Vec<u8>> {
        &self.durable
    }

    /// The volatile operations, in log order, each with its index in the log.
    pub fn volatile(&self) -> &[(usize, MemOp)] {
        &self.volatile
    }

    /// The image a power cut leaves when it keeps `keep(i, op)` of the `i`-th volatile
    /// operation. What is kept is applied in log order, so of two overlapping writes kept, the
    /// later one's bytes win where both landed.
    pub fn image(
        &self,
        mut keep: impl FnMut(usize, &MemOp) -> Persist,
    ) -> BTreeMap<String, Vec<u8>> {
        let mut files = self.durable.clone();
        for (i, (_, op)) in self.volatile.iter().enumerate() {
            let k = keep(i, op);
            MemEnv::apply_persist(&mut files, op, &k);
        }
        files
    }
}

#[derive(Debug)]
struct MemFile {
    name: String,
    shared: Arc<Mutex<MemShared>>,
    gate: Arc<SyncGate>,
}

impl MemFile {
    fn mutate(&self, op: MemOp) -> io::Result<()> {
        let mut s = lock_mem(&self.shared);
        s.tick(&self.name, matches!(op, MemOp::Sync { .. }))?;
        if !matches!(op, MemOp::Sync { .. }) {
            if let Some(n) = s.fail_writes_after {
                if n == 0 {
                    return Err(io::Error::from_raw_os_error(libc::ENOSPC));
                }
                s.fail_writes_after = Some(n - 1);
            }
        }
        MemEnv::apply(&mut s.files, &op);
        if s.recording {
            s.log.push(op);
        }
        Ok(())
    }
}

impl FileIo for MemFile {
    fn len(&self) -> io::Result<u64> {
        Ok(lock_mem(&self.shared)
            .files
            .get(&self.name)
            .map_or(0, |f| f.len() as u64))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.mutate(MemOp::SetLen {
            file: self.name.clone(),
            len,
        })
    }

    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        let mut s = lock_mem(&self.shared);
        s.tick(&self.name, false)?;
        let data = s
            .files
            .get(&self.name)
            .map(Vec::as_slice)
            .unwrap_or_default();
        buf.fill(0);
        let start = (off as usize).min(data.len());
        let end = (off as usize + buf.len()).min(data.len());
        buf[..end - start].copy_from_slice(&data[start..end]);
        Ok(())
    }

    fn write_at(&self, data: &[u8], off: u64) -> io::Result<()> {
        let mut held = self.gate.held_writes.lock();
        let holds = |h: &Option<(String, usize, u64)>| {
            h.as_ref()
                .is_some_and(|(f, min, _)| *f == self.name && data.len() >= *min)
        };
        if holds(&held) {
            if let Some((_, _, got)) = held.as_mut() {
                *got += 1;
            }
            self.gate.changed.notify_all();
            while holds(&held) {
                self.gate.changed.wait(&mut held);
            }
        }
        drop(held);
        self.mutate(MemOp::Write {
            file: self.name.clone(),
            off,
            data: data.to_vec(),
        })
    }

    fn sync(&self) -> io::Result<()> {
        let mut held = self.gate.held.lock();
        if let Some((_, got)) = held.as_mut().filter(|(f, _)| *f == self.name) {
            *got += 1;
            self.gate.changed.notify_all();
            while held.as_ref().is_some_and(|(f, _)| *f == self.name) {
                self.gate.changed.wait(&mut held);
            }
        }
        drop(held);
        self.mutate(MemOp::Sync {
            file: self.name.clone(),
        })
    }

    fn copy_within(&self, src: u64, dst: u64, len: u64) -> io::Result<()> {
        let mut buf = vec![0u8; len as usize];
        self.read_at(&mut buf, src)?;
        self.write_at(&buf, dst)
    }

    fn punch(&self, off: u64, len: u64) -> io::Result<()> {
        self.mutate(MemOp::Punch {
            file: self.name.clone(),
            off,
            len,
        })
    }
}

#[derive(Debug)]
struct MemLock {
    shared: Arc<Mutex<MemShared>>,
}

impl Drop for MemLock {
    fn drop(&mut self) {
        lock_mem(&self.shared).locked = false;
    }
}

impl Env for MemEnv {
    fn open(&self, name: &str, create: bool) -> Result<Arc<dyn FileIo>> {
        let mut s = lock_mem(&self.shared);
        if !s.files.contains_key(name) {
            if !create {
                return Err(Error::NotAStore {
                    path: self.path(),
                    reason: format!("{name} is missing"),
                });
            }
            s.files.insert(name.to_string(), Vec::new());
        }
        Ok(Arc::new(MemFile {
            name: name.to_string(),
            shared: self.shared.clone(),
            gate: self.gate.clone(),
        }))
    }

    fn exists(&self, name: &str) -> bool {
        lock_mem(&self.shared).files.contains_key(name)
    }

    fn lock(&self) -> Result<Box<dyn Send + Sync + Debug>> {
        let mut s = lock_mem(&self.shared);
        if s.locked {
            return Err(Error::InUse {
                path: self.path(),
                holder: Some(std::process::id()),
            });
        }
        s.locked = true;
        Ok(Box::new(MemLock {
            shared: self.shared.clone(),
        }))
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("<memory>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_env_log_replays_to_same_files() -> Result<()> {
        let env = MemEnv::new();
        env.set_recording(true);
        let f = env.open("a", true)?;
        f.write_at(b"hello", 3)?;
        f.sync()?;
        f.punch(4, 2)?;
        f.set_len(6)?;
        let mut files = BTreeMap::new();
        for op in env.log() {
            MemEnv::apply(&mut files, &op);
        }
        assert_eq!(files, env.files());
        Ok(())
    }

    #[test]
    fn torn_write_applies_exactly_the_chosen_sectors() {
        let data: Vec<u8> = (0..2500u32).map(|i| (i % 251) as u8 + 1).collect();
        let op = MemOp::Write {
            file: "f".into(),
            off: 700,
            data: data.clone(),
        };
        assert_eq!(
            op.sectors(),
            vec![
                (700, 1024),
                (1024, 1536),
                (1536, 2048),
                (2048, 2560),
                (2560, 3072),
                (3072, 3200)
            ]
        );
        let old = vec![0xAAu8; 4000];
        let mut files = BTreeMap::from([("f".to_string(), old.clone())]);
        MemEnv::apply_persist(&mut files, &op, &Persist::Sectors(vec![5, 0, 2]));
        let f = &files["f"];
        assert_eq!(f.len(), 4000);
        for (i, &b) in f.iter().enumerate() {
            let chosen =
                (700..1024).contains(&i) || (1536..2048).contains(&i) || (3072..3200).contains(&i);
            let want = if chosen { data[i - 700] } else { 0xAA };
            assert_eq!(b, want, "byte {i}");
        }
        // Whole and lost are the two ends.
        let mut whole = BTreeMap::from([("f".to_string(), old.clone())]);
        MemEnv::apply_persist(&mut whole, &op, &Persist::Whole);
        let mut all = BTreeMap::from([("f".to_string(), old.clone())]);
        MemEnv::apply_persist(&mut all, &op, &Persist::Sectors((0..6).collect()));
        assert_eq!(whole, all);
        let mut lost = BTreeMap::from([("f".to_string(), old.clone())]);
        MemEnv::apply_persist(&mut lost, &op, &Persist::Lost);
        MemEnv::apply_persist(&mut lost, &op, &Persist::Sectors(Vec::new()));
        assert_eq!(lost["f"], old);
    }

    #[test]
    fn torn_write_past_the_end_grows_the_file_only_as_far_as_its_chosen_sectors() {
        let op = MemOp::Write {
            file: "f".into(),
            off: 3900,
            data: vec![7u8; 1000],
        };
        assert_eq!(op.sectors(), vec![(3900, 4096), (4096, 4608), (4608, 4900)]);
        let mut files = BTreeMap::from([("f".to_string(), vec![0xAAu8; 4000])]);
        MemEnv::apply_persist(&mut files, &op, &Persist::Sectors(vec![1]));
        let f = &files["f"];
        assert_eq!(f.len(), 4608);
        assert!(f[..4000].iter().all(|&b| b == 0xAA));
        assert!(f[4000..4096].iter().all(|&b| b == 0));
        assert!(f[4096..].iter().all(|&b| b == 7));
        // Only the size: the file grows, no byte of the write lands.
        let mut sized = BTreeMap::from([("f".to_string(), vec![0xAAu8; 4000])]);
        MemEnv::apply_persist(&mut sized, &op, &Persist::SizeOnly);
        assert_eq!(sized["f"].len(), 4900);
        assert!(sized["f"][..4000].iter().all(|&b| b == 0xAA));
        assert!(sized["f"][4000..].iter().all(|&b| b == 0));
        // A punch is atomic: any non-empty choice applies it whole.
        let punch = MemOp::Punch {
            file: "f".into(),
            off: 0,
            len: 100,
        };
        assert!(punch.sectors().is_empty());
        MemEnv::apply_persist(&mut files, &punch, &Persist::Sectors(vec![0]));
        assert!(files["f"][..100].iter().all(|&b| b == 0));
        assert_eq!(files["f"][100], 0xAA);
    }

    #[test]
    fn device_model_a_sync_makes_only_its_own_file_durable() {
        let w = |file: &str, off: u64, b: u8| MemOp::Write {
            file: file.into(),
            off,
            data: vec![b; 4],
        };
        let sync = |file: &str| MemOp::Sync { file: file.into() };
        let mut dev = DeviceModel::new(BTreeMap::new());
        for op in [
            w("a", 0, 1),
            w("b", 0, 2),
            sync("a"),
            w("a", 2, 3),
            w("a", 0, 4),
        ] {
            dev.step(&op);
        }
        assert_eq!(dev.cut(), 5);
        assert_eq!(dev.durable().get("a"), Some(&vec![1u8; 4]));
        assert_eq!(dev.durable().get("b"), None, "b was never synced");
        let at: Vec<usize> = dev.volatile().iter().map(|(i, _)| *i).collect();
        assert_eq!(at, vec![1, 3, 4]);
        // Nothing volatile kept: the durable files.
        assert_eq!(&dev.image(|_, _| Persist::Lost), dev.durable());
        // Everything kept: what was issued, the later overlapping write winning.
        let all = dev.image(|_, _| Persist::Whole);
        assert_eq!(all["a"], vec![4, 4, 4, 4, 3, 3]);
        assert_eq!(all["b"], vec![2; 4]);
        // Only the earlier of the two overlapping writes.
        let some = dev.image(|i, _| {
            if i == 1 {
                Persist::Whole
            } else {
                Persist::Lost
            }
        });
        assert_eq!(some["a"], vec![1, 1, 3, 3, 3, 3]);
        assert!(!some.contains_key("b"));
        dev.step(&sync("b"));
        assert_eq!(dev.durable().get("b"), Some(&vec![2u8; 4]));
        assert_eq!(dev.volatile().len(), 2);
    }
}
