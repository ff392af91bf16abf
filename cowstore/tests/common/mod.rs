//! Shared by the model and crash tests: a reference model of the store (paths, inodes, file
//! bytes), a driver that applies one action to both the store and the model and compares the
//! outcomes, and whole-tree snapshots for comparing a store against a remembered state.

#![allow(dead_code)]

pub use cowfs_test_support::{first_difference, pattern, write_into};
use cowstore::io::MemEnv;
use cowstore::*;
use std::collections::BTreeMap;
use std::sync::Arc;

pub const ME: Caller = Caller {
    uid: 1000,
    gid: 1000,
};

/// A node of the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MNode {
    Dir,
    File(Vec<u8>),
    Symlink(Vec<u8>),
}

/// The reference model: full paths ("a/b", root is "") to inode numbers, and inode contents.
/// Inode numbers are the store's own (the model remembers, it does not predict them).
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub paths: BTreeMap<String, u64>,
    pub nodes: BTreeMap<u64, MNode>,
    /// Open handles per inode.
    pub open: BTreeMap<u64, u32>,
    /// Extended attributes per inode (absent: none).
    pub xattrs: BTreeMap<u64, BTreeMap<Vec<u8>, Vec<u8>>>,
}

pub fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

pub fn name_of(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(_, n)| n)
}

pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// `inner` is `outer` or lies below it.
pub fn is_within(inner: &str, outer: &str) -> bool {
    outer.is_empty()
        || inner == outer
        || (inner.starts_with(outer) && inner.as_bytes().get(outer.len()) == Some(&b'/'))
}

/// What an action names a regular file by: a path, or an open handle (which may be unlinked).
#[derive(Clone, Debug)]
pub enum Target {
    Path(String),
    Handle(usize),
}

/// One operation on the store, in terms of paths.
#[derive(Clone, Debug)]
pub enum Act {
    Create(String),
    Mkdir(String),
    Symlink(String, Vec<u8>),
    Unlink(String),
    Rmdir(String),
    Rename(String, String, RenameFlags),
    Link(String, String),
    /// Open a regular file by path; the handle is appended to the handle list.
    Open(String),
    /// Close the handle at this index of the handle list.
    Release(usize),
    Write(Target, u64, Vec<u8>),
    Truncate(Target, u64),
    Punch(Target, u64, u64),
    ZeroRange(Target, u64, u64, bool),
    Allocate(Target, u64, u64, bool),
    Clone(Target, u64, Target, u64, u64),
    /// setxattr(path, name, value) with no flags (create or replace).
    SetXattr(String, Vec<u8>, Vec<u8>),
    RemoveXattr(String, Vec<u8>),
    Commit,
    Reopen,
}

impl Model {
    pub fn new() -> Model {
        let mut m = Model::default();
        m.paths.insert(String::new(), InodeNo::ROOT.0);
        m.nodes.insert(InodeNo::ROOT.0, MNode::Dir);
        m
    }

    pub fn node(&self, path: &str) -> Option<&MNode> {
        self.paths.get(path).and_then(|i| self.nodes.get(i))
    }

    pub fn is_dir(&self, path: &str) -> bool {
        matches!(self.node(path), Some(MNode::Dir))
    }

    pub fn dirs(&self) -> Vec<String> {
        self.paths
            .keys()
            .filter(|p| self.is_dir(p))
            .cloned()
            .collect()
    }

    /// Every entry except the root.
    pub fn entries(&self) -> Vec<String> {
        self.paths
            .keys()
            .filter(|p| !p.is_empty())
            .cloned()
            .collect()
    }

    pub fn files(&self) -> Vec<String> {
        self.paths
            .iter()
            .filter(|(_, i)| matches!(self.nodes.get(i), Some(MNode::File(_))))
            .map(|(p, _)| p.clone())
            .collect()
    }

    pub fn children(&self, dir: &str) -> Vec<String> {
        self.paths
            .keys()
            .filter(|p| !p.is_empty() && parent_of(p) == dir)
            .cloned()
            .collect()
    }

    pub fn nlink(&self, ino: u64) -> u32 {
        match self.nodes.get(&ino) {
            Some(MNode::Dir) => {
                let path = self
                    .paths
                    .iter()
                    .find(|(_, &i)| i == ino)
                    .map(|(p, _)| p.clone());
                match path {
                    Some(p) => {
                        2 + self.children(&p).iter().filter(|c| self.is_dir(c)).count() as u32
                    }
                    None => 0,
                }
            }
            _ => self.paths.values().filter(|&&i| i == ino).count() as u32,
        }
    }

    /// Forget an inode if nothing names it and nothing holds it open.
    fn maybe_drop(&mut self, ino: u64) {
        if !self.paths.values().any(|&i| i == ino) && !self.open.contains_key(&ino) {
            self.nodes.remove(&ino);
            self.xattrs.remove(&ino);
        }
    }

    fn remove_path(&mut self, path: &str) {
        if let Some(ino) = self.paths.remove(path) {
            self.maybe_drop(ino);
        }
    }

    fn file_mut(&mut self, ino: u64) -> &mut Vec<u8> {
        match self.nodes.get_mut(&ino) {
            Some(MNode::File(d)) => d,
            other => panic!("model: inode {ino} is not a file: {other:?}"),
        }
    }

    pub fn file(&self, ino: u64) -> &[u8] {
        match self.nodes.get(&ino) {
            Some(MNode::File(d)) => d,
            other => panic!("model: inode {ino} is not a file: {other:?}"),
        }
    }

    fn dir_is_empty(&self, dir: &str) -> bool {
        self.children(dir).is_empty()
    }

    /// Move `from` (and everything below it) to `to`.
    fn move_tree(&mut self, from: &str, to: &str) {
        let moving: Vec<(String, u64)> = self
            .paths
            .iter()
            .filter(|(p, _)| !p.is_empty() && is_within(p, from))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        for (p, _) in &moving {
            self.paths.remove(p);
        }
        for (p, i) in moving {
            let rest = &p[from.len()..];
            self.paths.insert(format!("{to}{rest}"), i);
        }
    }

    /// The model's answer to a rename, applied when it succeeds.
    fn rename(&mut self, src: &str, dst: &str, flags: RenameFlags) -> Result<(), i32> {
        let Some(&src_ino) = self.paths.get(src) else {
            return Err(libc::ENOENT);
        };
        let src_dir = self.is_dir(src);
        let dst_ino = self.paths.get(dst).copied();
        let (sp, dp) = (parent_of(src), parent_of(dst));
        if flags.exchange {
            let Some(_) = dst_ino else {
                return Err(libc::ENOENT);
            };
            if src == dst {
                return Ok(());
            }
            if src_dir && is_within(dp, src) {
                return Err(libc::EINVAL);
            }
            if self.is_dir(dst) && is_within(sp, dst) {
                return Err(libc::EINVAL);
            }
            let tmp = "\u{1}swap";
            self.move_tree(src, tmp);
            self.move_tree(dst, src);
            self.move_tree(tmp, dst);
            return Ok(());
        }
        if let Some(d) = dst_ino {
            if flags.noreplace {
                return Err(libc::EEXIST);
            }
            if d == src_ino {
                return Ok(());
            }
            match (src_dir, self.is_dir(dst)) {
                (true, false) => return Err(libc::ENOTDIR),
                (false, true) => return Err(libc::EISDIR),
                (true, true) if !self.dir_is_empty(dst) => return Err(libc::ENOTEMPTY),
                _ => {}
            }
        }
        if src_dir && is_within(dp, src) {
            return Err(libc::EINVAL);
        }
        if dst_ino.is_some() {
            self.remove_path(dst);
        }
        self.move_tree(src, dst);
        Ok(())
    }
}

/// Told the log position before and after a commit, and the state it made durable.
pub type CommitHook = Box<dyn FnMut(usize, usize, &Model)>;

/// A store and its model, driven together.
pub struct Harness {
    pub env: MemEnv,
    pub store: Option<Store>,
    pub model: Model,
    /// Open handles: inode numbers, in opening order.
    pub handles: Vec<u64>,
    pub bs: u64,
    /// When set, an I/O-level failure (ENOSPC) of the store is returned instead of compared.
    pub tolerate_nospace: bool,
    /// Called with the log position before and after each commit (the crash test records them).
    pub on_commit: Option<CommitHook>,
}

pub fn open_opts() -> OpenOptions {
    OpenOptions {
        commit_interval: None,
        cache_bytes: 4 << 20,
        ..Default::default()
    }
}

fn errno_of<T>(r: &Result<T>) -> Result<(), i32> {
    match r {
        Ok(_) => Ok(()),
        Err(e) => Err(e.errno()),
    }
}

impl Harness {
    pub fn new(bs: u32) -> Harness {
        let env = MemEnv::new();
        Store::mkfs_env(Arc::new(env.clone()), &crate::engines::mkfs_opts(bs)).expect("mkfs");
        Harness::on_env(env, bs)
    }

    /// A harness over an existing, freshly made store.
    pub fn on_env(env: MemEnv, bs: u32) -> Harness {
        let store = Store::open_env(Arc::new(env.clone()), &open_opts()).expect("open");
        Harness {
            env,
            store: Some(store),
            model: Model::new(),
            handles: Vec::new(),
            bs: u64::from(bs),
            tolerate_nospace: false,
            on_commit: None,
        }
    }

    pub fn store(&self) -> &Store {
        self.store.as_ref().expect("store is open")
    }

    pub fn ino_of(&self, path: &str) -> Result<InodeNo> {
        let mut ino = InodeNo::ROOT;
        if path.is_empty() {
            return Ok(ino);
        }
        for part in path.split('/') {
            ino = self.store().lookup(ino, part.as_bytes())?.ino;
        }
        Ok(ino)
    }

    fn target_ino(&self, t: &Target) -> Option<u64> {
        match t {
            Target::Path(p) => match self.model.node(p) {
                Some(MNode::File(_)) => self.model.paths.get(p).copied(),
                _ => None,
            },
            Target::Handle(h) => self.handles.get(*h).copied(),
        }
    }

    fn log_len(&self) -> usize {
        self.env.log_len()
    }

    /// Compare the store's outcome with the model's; true when the model should be updated.
    fn agree<T: std::fmt::Debug>(
        &self,
        act: &Act,
        got: &Result<T>,
        want: Result<(), i32>,
    ) -> Result<bool> {
        if let Err(e) = got {
            if self.tolerate_nospace && matches!(e, Error::NoSpace | Error::Io(_)) {
                return Ok(false);
            }
        }
        assert_eq!(
            errno_of(got),
            want,
            "{act:?}: store said {got:?}, the model expected {want:?}"
        );
        Ok(want.is_ok())
    }

    /// Apply one action to store and model, asserting they agree. Returns the store's error (if
    /// any) so that fault-injection tests can react to it.
    pub fn apply(&mut self, act: &Act) -> Result<()> {
        let s = self.store.as_ref().expect("store is open");
        let outcome: Result<()> = match act {
            Act::Create(p) | Act::Mkdir(p) | Act::Symlink(p, _) => {
                let parent = self.ino_of(parent_of(p))?;
                let name = name_of(p).as_bytes();
                let got = match act {
                    Act::Create(_) => s.create(parent, name, &NewInode::regular(0o644), ME),
                    Act::Mkdir(_) => s.mkdir(parent, name, 0o755, ME),
                    Act::Symlink(_, t) => s.symlink(parent, name, t, ME),
                    _ => unreachable!(),
                };
                let want = if self.model.paths.contains_key(p) {
                    Err(libc::EEXIST)
                } else {
                    Ok(())
                };
                if self.agree(act, &got, want)? {
                    let attr = got.as_ref().expect("agreed ok");
                    let node = match act {
                        Act::Create(_) => MNode::File(Vec::new()),
                        Act::Mkdir(_) => MNode::Dir,
                        Act::Symlink(_, t) => MNode::Symlink(t.clone()),
                        _ => unreachable!(),
                    };
                    assert!(
                        !self.model.nodes.contains_key(&attr.ino.0),
                        "{act:?}: inode number {} reused while still live",
                        attr.ino.0
                    );
                    self.model.paths.insert(p.clone(), attr.ino.0);
                    self.model.nodes.insert(attr.ino.0, node);
                }
                got.map(|_| ())
            }
            Act::Unlink(p) => {
                let parent = self.ino_of(parent_of(p))?;
                let got = s.unlink(parent, name_of(p).as_bytes());
                let want = match self.model.node(p) {
                    None => Err(libc::ENOENT),
                    Some(MNode::Dir) => Err(libc::EISDIR),
                    Some(_) => Ok(()),
                };
                if self.agree(act, &got, want)? {
                    self.model.remove_path(p);
                }
                got
            }
            Act::Rmdir(p) => {
                let parent = self.ino_of(parent_of(p))?;
                let got = s.rmdir(parent, name_of(p).as_bytes());
                let want = match self.model.node(p) {
                    None => Err(libc::ENOENT),
                    Some(MNode::Dir) if !self.model.dir_is_empty(p) => Err(libc::ENOTEMPTY),
                    Some(MNode::Dir) => Ok(()),
                    Some(_) => Err(libc::ENOTDIR),
                };
                if self.agree(act, &got, want)? {
                    self.model.remove_path(p);
                }
                got
            }
            Act::Rename(from, to, flags) => {
                let (sp, dp) = (self.ino_of(parent_of(from))?, self.ino_of(parent_of(to))?);
                let got = s.rename(
                    sp,
                    name_of(from).as_bytes(),
                    dp,
                    name_of(to).as_bytes(),
                    *flags,
                );
                let mut after = self.model.clone();
                let want = after.rename(from, to, *flags);
                if self.agree(act, &got, want)? {
                    self.model = after;
                }
                got
            }
            Act::Link(existing, new) => {
                let ino = self.ino_of(existing)?;
                let np = self.ino_of(parent_of(new))?;
                let got = s.link(ino, np, name_of(new).as_bytes());
                let want = if self.model.is_dir(existing) {
                    Err(libc::EPERM)
                } else if self.model.paths.contains_key(new) {
                    Err(libc::EEXIST)
                } else {
                    Ok(())
                };
                if self.agree(act, &got, want)? {
                    self.model.paths.insert(new.clone(), ino.0);
                }
                got.map(|_| ())
            }
            Act::Open(p) => {
                let ino = self.ino_of(p)?;
                let got = s.open_inode(ino);
                if self.agree(act, &got, Ok(()))? {
                    *self.model.open.entry(ino.0).or_insert(0) += 1;
                    self.handles.push(ino.0);
                }
                got.map(|_| ())
            }
            Act::Release(h) => {
                let ino = self.handles.remove(*h);
                let got = s.release(InodeNo(ino));
                // A failed release still drops the handle (as the kernel does).
                let n = self.model.open.entry(ino).or_insert(1);
                *n -= 1;
                if *n == 0 {
                    self.model.open.remove(&ino);
                    self.model.maybe_drop(ino);
                }
                self.agree(act, &got, Ok(()))?;
                got
            }
            Act::Write(t, off, data) => {
                let ino = self.target_ino(t).expect("write target is a file");
                let got = s.write(InodeNo(ino), *off, data);
                if self.agree(act, &got, Ok(()))? {
                    assert_eq!(got.as_ref().ok(), Some(&data.len()), "{act:?}");
                    if !data.is_empty() {
                        write_into(self.model.file_mut(ino), *off, data);
                    }
                }
                got.map(|_| ())
            }
            Act::Truncate(t, size) => {
                let ino = self.target_ino(t).expect("truncate target is a file");
                let got = s.setattr(
                    InodeNo(ino),
                    &SetAttr {
                        size: Some(*size),
                        ..Default::default()
                    },
                );
                if self.agree(act, &got, Ok(()))? {
                    self.model.file_mut(ino).resize(*size as usize, 0);
                    assert_eq!(got.as_ref().map(|a| a.size).ok(), Some(*size));
                }
                got.map(|_| ())
            }
            Act::Punch(t, off, len)
            | Act::ZeroRange(t, off, len, _)
            | Act::Allocate(t, off, len, _) => {
                let ino = self.target_ino(t).expect("fallocate target is a file");
                let mode = match act {
                    Act::Punch(..) => FallocMode::PunchHole,
                    Act::ZeroRange(.., keep) => FallocMode::ZeroRange { keep_size: *keep },
                    Act::Allocate(.., keep) => FallocMode::Allocate { keep_size: *keep },
                    _ => unreachable!(),
                };
                let got = s.fallocate(InodeNo(ino), *off, *len, mode);
                let want = if *len == 0 { Err(libc::EINVAL) } else { Ok(()) };
                if self.agree(act, &got, want)? {
                    let f = self.model.file_mut(ino);
                    let size = f.len() as u64;
                    let end = off + len;
                    let zero_to = match mode {
                        FallocMode::Allocate { .. } => *off,
                        _ => end.min(size),
                    };
                    if *off < zero_to {
                        f[*off as usize..zero_to as usize].fill(0);
                    }
                    let keep = match mode {
                        FallocMode::PunchHole => true,
                        FallocMode::ZeroRange { keep_size }
                        | FallocMode::Allocate { keep_size } => keep_size,
                    };
                    if !keep && end > size {
                        f.resize(end as usize, 0);
                    }
                }
                got
            }
            Act::Clone(st, so, dt, doff, len) => {
                let src = self.target_ino(st).expect("clone source is a file");
                let dst = self.target_ino(dt).expect("clone destination is a file");
                let got = s.clone_range(InodeNo(src), *so, InodeNo(dst), *doff, *len);
                let src_data = self.model.file(src);
                let size = src_data.len() as u64;
                let (want, n) = if *so >= size || *len == 0 {
                    (Ok(()), 0)
                } else {
                    let n = (*len).min(size - so);
                    if src == dst && *so < doff + n && *doff < so + n {
                        (Err(libc::EINVAL), 0)
                    } else {
                        (Ok(()), n)
                    }
                };
                if self.agree(act, &got, want)? {
                    assert_eq!(got.as_ref().ok(), Some(&n), "{act:?}: bytes cloned");
                    if n > 0 {
                        let bytes = src_data[*so as usize..(so + n) as usize].to_vec();
                        write_into(self.model.file_mut(dst), *doff, &bytes);
                    }
                }
                got.map(|_| ())
            }
            Act::SetXattr(p, name, value) => {
                let ino = self.ino_of(p)?;
                let got = s.setxattr(ino, name, value, 0);
                if self.agree(act, &got, Ok(()))? {
                    self.model
                        .xattrs
                        .entry(ino.0)
                        .or_default()
                        .insert(name.clone(), value.clone());
                }
                got
            }
            Act::RemoveXattr(p, name) => {
                let ino = self.ino_of(p)?;
                let got = s.removexattr(ino, name);
                let has = self
                    .model
                    .xattrs
                    .get(&ino.0)
                    .is_some_and(|x| x.contains_key(name));
                let want = if has { Ok(()) } else { Err(libc::ENODATA) };
                if self.agree(act, &got, want)? {
                    let x = self.model.xattrs.entry(ino.0).or_default();
                    x.remove(name);
                    if x.is_empty() {
                        self.model.xattrs.remove(&ino.0);
                    }
                }
                got
            }
            Act::Commit => {
                let before = self.log_len();
                let got = s.commit();
                let after = self.log_len();
                if self.agree(act, &got, Ok(()))? {
                    let report = s.check().expect("check runs");
                    assert!(
                        report.is_clean(),
                        "check after commit: {:#?}",
                        report.problems
                    );
                    if let Some(f) = self.on_commit.as_mut() {
                        f(before, after, &self.model);
                    }
                }
                got
            }
            Act::Reopen => {
                let store = self.store.take().expect("open");
                let before = self.log_len();
                let got = store.close();
                let mid = self.log_len();
                if self.agree(act, &got, Ok(()))? {
                    if let Some(f) = self.on_commit.as_mut() {
                        f(before, mid, &self.model);
                    }
                }
                // Open handles die with the process that held them.
                self.handles.clear();
                let open: Vec<u64> = std::mem::take(&mut self.model.open).into_keys().collect();
                for ino in open {
                    self.model.maybe_drop(ino);
                }
                let reopened = Store::open_env(Arc::new(self.env.clone()), &open_opts());
                let end = self.log_len();
                match reopened {
                    Ok(st) => {
                        let report = st.check().expect("check runs");
                        assert!(
                            report.is_clean(),
                            "check after reopen: {:#?}",
                            report.problems
                        );
                        self.store = Some(st);
                        if let Some(f) = self.on_commit.as_mut() {
                            f(mid, end, &self.model);
                        }
                        got
                    }
                    Err(e) if self.tolerate_nospace && matches!(e, Error::NoSpace) => Err(e),
                    Err(e) => panic!("reopen failed: {e}"),
                }
            }
        };
        outcome
    }

    /// Compare the whole store with the model: tree, kinds, link counts, sizes, bytes, readdir
    /// (whole and paged), SEEK_DATA/SEEK_HOLE, and the files that are open but unlinked.
    pub fn verify(&self) {
        let s = self.store();
        for dir in self.model.dirs() {
            let ino = InodeNo(self.model.paths[&dir]);
            let all = s.readdir(ino, 0, usize::MAX).expect("readdir");
            assert_eq!(all[0].name, b".");
            assert_eq!(all[0].ino, ino);
            assert_eq!(all[1].name, b"..");
            let parent_ino = InodeNo(self.model.paths[parent_of(&dir)]);
            assert_eq!(all[1].ino, parent_ino, "'..' of /{dir}");
            let mut got: Vec<(String, u64, String)> = all[2..]
                .iter()
                .map(|e| {
                    (
                        String::from_utf8(e.name.clone()).expect("utf8"),
                        e.ino.0,
                        format!("{:?}", e.kind),
                    )
                })
                .collect();
            got.sort();
            let want: Vec<(String, u64, String)> = self
                .model
                .children(&dir)
                .into_iter()
                .map(|c| {
                    let i = self.model.paths[&c];
                    let kind = match self.model.nodes[&i] {
                        MNode::Dir => FileKind::Directory,
                        MNode::File(_) => FileKind::Regular,
                        MNode::Symlink(_) => FileKind::Symlink,
                    };
                    (name_of(&c).to_string(), i, format!("{kind:?}"))
                })
                .collect();
            assert_eq!(got, want, "listing of /{dir}");
            // Paged listing, two entries at a time, resumes at the cookies.
            let mut paged = Vec::new();
            let mut cookie = 0;
            loop {
                let page = s.readdir(ino, cookie, 2).expect("readdir page");
                if page.is_empty() {
                    break;
                }
                cookie = page.last().expect("nonempty").cookie;
                paged.extend(page.into_iter().map(|e| e.name));
            }
            let whole: Vec<Vec<u8>> = all.into_iter().map(|e| e.name).collect();
            assert_eq!(paged, whole, "paged listing of /{dir}");
        }
        let mut seen = std::collections::BTreeSet::new();
        for (path, &ino) in &self.model.paths {
            assert_eq!(
                self.ino_of(path).expect("lookup").0,
                ino,
                "lookup of /{path}"
            );
            if seen.insert(ino) {
                self.verify_inode(ino, path);
            }
        }
        for &ino in self.model.open.keys() {
            if seen.insert(ino) {
                self.verify_inode(ino, "<open, unlinked>");
            }
        }
    }

    fn verify_inode(&self, ino: u64, path: &str) {
        let s = self.store();
        let attr = s.getattr(InodeNo(ino)).expect("getattr");
        assert_eq!(attr.nlink, self.model.nlink(ino), "link count of /{path}");
        assert_eq!(
            inode_xattrs(s, InodeNo(ino)).expect("xattrs"),
            self.model.xattrs.get(&ino).cloned().unwrap_or_default(),
            "xattrs of /{path}"
        );
        match &self.model.nodes[&ino] {
            MNode::Dir => assert_eq!(attr.kind, FileKind::Directory, "/{path}"),
            MNode::Symlink(t) => {
                assert_eq!(attr.kind, FileKind::Symlink, "/{path}");
                assert_eq!(&s.readlink(InodeNo(ino)).expect("readlink"), t);
            }
            MNode::File(data) => {
                assert_eq!(attr.kind, FileKind::Regular, "/{path}");
                assert_eq!(attr.size, data.len() as u64, "size of /{path}");
                assert_eq!(attr.allocated % self.bs, 0);
                let got = s
                    .read_to_vec(InodeNo(ino), 0, data.len() as u64 + 3 * self.bs)
                    .expect("read");
                if let Some(at) = first_difference(&got, data) {
                    panic!(
                        "contents of /{path} (inode {ino}, {} bytes) differ from the model, \
                         first at byte {at} (got {} bytes: {:?}, want {:?})",
                        data.len(),
                        got.len(),
                        got.get(at),
                        data.get(at)
                    );
                }
                // An unaligned read in the middle.
                if data.len() > 10 {
                    let part = s.read_to_vec(InodeNo(ino), 3, 7).expect("read");
                    assert_eq!(part, data[3..10]);
                }
                self.verify_seek(ino, data, path);
            }
        }
    }

    /// SEEK_DATA never skips a non-zero byte; SEEK_HOLE never lands on a non-zero byte (nor
    /// inside the rest of that block); data and holes partition the file at each offset.
    fn verify_seek(&self, ino: u64, data: &[u8], path: &str) {
        let s = self.store();
        let size = data.len() as u64;
        let half = (self.bs / 2).max(1);
        let mut offs: Vec<u64> = (0..size).step_by(half as usize).collect();
        offs.extend([1, size.saturating_sub(1), size, size + 1]);
        for off in offs {
            let d = s.seek(InodeNo(ino), off, SeekWhence::Data);
            let h = s.seek(InodeNo(ino), off, SeekWhence::Hole);
            if off >= size {
                assert!(
                    matches!(d, Err(Error::NoData)) && matches!(h, Err(Error::NoData)),
                    "/{path}: seek at/after EOF {off} (size {size}): {d:?} {h:?}"
                );
                continue;
            }
            let h = h.expect("SEEK_HOLE before EOF");
            assert!(off <= h && h <= size, "/{path}: SEEK_HOLE({off}) = {h}");
            let block_end = ((h / self.bs) + 1) * self.bs;
            let hole_end = block_end.min(size) as usize;
            assert!(
                data[h as usize..hole_end].iter().all(|&b| b == 0),
                "/{path}: SEEK_HOLE({off}) = {h} lands on data"
            );
            match d {
                Ok(p) => {
                    assert!(off <= p && p < size, "/{path}: SEEK_DATA({off}) = {p}");
                    assert!(
                        data[off as usize..p as usize].iter().all(|&b| b == 0),
                        "/{path}: SEEK_DATA({off}) = {p} skips data"
                    );
                    assert_eq!(
                        p == off,
                        h > off,
                        "/{path}: at {off} data/hole disagree (data {p}, hole {h})"
                    );
                }
                Err(Error::NoData) => {
                    assert!(
                        data[off as usize..].iter().all(|&b| b == 0),
                        "/{path}: SEEK_DATA({off}) says no data, but there is"
                    );
                    assert_eq!(h, off, "/{path}: no data after {off} but hole at {h}");
                }
                Err(e) => panic!("/{path}: SEEK_DATA({off}): {e}"),
            }
        }
    }

    /// The sum of every file's allocation equals the store's logical bytes.
    pub fn verify_stats(&self) {
        let s = self.store();
        let st = s.stats().expect("stats");
        let mut logical = 0;
        let mut inos: std::collections::BTreeSet<u64> =
            self.model.paths.values().copied().collect();
        inos.extend(self.model.open.keys().copied());
        for ino in inos {
            if let Some(MNode::File(_)) = self.model.nodes.get(&ino) {
                logical += s.getattr(InodeNo(ino)).expect("getattr").allocated;
            }
        }
        assert_eq!(st.logical_bytes, logical, "{st:?}");
        assert_eq!(st.inodes, self.model.nodes.len() as u64, "{st:?}");
        assert_eq!(st.referenced_bytes + st.free_bytes, st.pool_bytes, "{st:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Snapshots: a store's visible state, comparable with a model's

/// What one path shows: inode, kind, link count, and bytes (file data or symlink target).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapEntry {
    pub ino: u64,
    pub kind: FileKind,
    pub nlink: u32,
    pub bytes: Vec<u8>,
}

pub type Snapshot = BTreeMap<String, SnapEntry>;

impl Model {
    pub fn snapshot(&self) -> Snapshot {
        self.paths
            .iter()
            .map(|(p, &ino)| {
                let (kind, bytes) = match &self.nodes[&ino] {
                    MNode::Dir => (FileKind::Directory, Vec::new()),
                    MNode::File(d) => (FileKind::Regular, d.clone()),
                    MNode::Symlink(t) => (FileKind::Symlink, t.clone()),
                };
                (
                    p.clone(),
                    SnapEntry {
                        ino,
                        kind,
                        nlink: self.nlink(ino),
                        bytes,
                    },
                )
            })
            .collect()
    }
}

/// Every path's extended attributes (paths without any are left out).
pub type XattrSnapshot = BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>;

impl Model {
    pub fn xattr_snapshot(&self) -> XattrSnapshot {
        self.paths
            .iter()
            .filter_map(|(p, ino)| self.xattrs.get(ino).map(|x| (p.clone(), x.clone())))
            .filter(|(_, x)| !x.is_empty())
            .collect()
    }
}

/// One inode's extended attributes, names with values.
pub fn inode_xattrs(s: &Store, ino: InodeNo) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut out = BTreeMap::new();
    for name in s.listxattr(ino)? {
        let value = s.getxattr(ino, &name)?;
        out.insert(name, value);
    }
    Ok(out)
}

/// The extended attributes of every path of a snapshot taken of this store.
pub fn snapshot_xattrs(s: &Store, snap: &Snapshot) -> Result<XattrSnapshot> {
    let mut out = XattrSnapshot::new();
    for (path, e) in snap {
        let x = inode_xattrs(s, InodeNo(e.ino))?;
        if !x.is_empty() {
            out.insert(path.clone(), x);
        }
    }
    Ok(out)
}

/// Walk a store from the root.
pub fn snapshot_store(s: &Store) -> Result<Snapshot> {
    let mut out = Snapshot::new();
    let mut todo = vec![(String::new(), InodeNo::ROOT)];
    while let Some((path, ino)) = todo.pop() {
        let a = s.getattr(ino)?;
        let bytes = match a.kind {
            FileKind::Regular => s.read_to_vec(ino, 0, a.size)?,
            FileKind::Symlink => s.readlink(ino)?,
            _ => Vec::new(),
        };
        if a.kind == FileKind::Directory {
            for e in s.readdir(ino, 2, usize::MAX)? {
                let name = String::from_utf8_lossy(&e.name).into_owned();
                todo.push((join(&path, &name), e.ino));
            }
        }
        out.insert(
            path,
            SnapEntry {
                ino: ino.0,
                kind: a.kind,
                nlink: a.nlink,
                bytes,
            },
        );
    }
    Ok(out)
}

/// A short description of how two snapshots differ, for failure messages.
pub fn snapshot_diff(got: &Snapshot, want: &Snapshot) -> String {
    let mut out = Vec::new();
    for (p, g) in got {
        match want.get(p) {
            None => out.push(format!("extra /{p}")),
            Some(w) if w != g => {
                let at = first_difference(&g.bytes, &w.bytes)
                    .map_or(String::new(), |i| format!(", first differing byte {i}"));
                out.push(format!(
                    "/{p}: got ino {} {:?} nlink {} {} bytes, want ino {} {:?} nlink {} {} bytes{at}",
                    g.ino,
                    g.kind,
                    g.nlink,
                    g.bytes.len(),
                    w.ino,
                    w.kind,
                    w.nlink,
                    w.bytes.len()
                ))
            }
            _ => {}
        }
    }
    for p in want.keys() {
        if !got.contains_key(p) {
            out.push(format!("missing /{p}"));
        }
    }
    out.join("; ")
}
