//! Property tests: random sequences of namespace and data operations (reflinks, overwrites of
//! shared ranges, truncate, hole punching, commits, reopens) run against the store and a plain
//! in-memory model; after every step the whole tree, every file's bytes, link counts, listings and
//! SEEK_DATA/SEEK_HOLE must agree, and after every commit `check()` must be clean.
//!
//! `PROPTEST_CASES` raises the number of cases (the defaults keep the suite fast).

mod common;
mod engines;

use common::*;
use cowstore::RenameFlags;
use proptest::prelude::*;

/// An offset or length relative to the block size: whole blocks plus an interesting remainder.
#[derive(Clone, Copy, Debug)]
struct Pos {
    blocks: u8,
    frac: u8,
    rnd: u16,
}

impl Pos {
    fn at(self, bs: u64) -> u64 {
        u64::from(self.blocks) * bs
            + match self.frac {
                0 => 0,
                1 => 1,
                2 => bs / 2,
                3 => bs - 1,
                _ => u64::from(self.rnd) % bs,
            }
    }
}

fn pos(max_blocks: u8) -> impl Strategy<Value = Pos> {
    (0..max_blocks, 0u8..6, any::<u16>()).prop_map(|(blocks, frac, rnd)| Pos { blocks, frac, rnd })
}

#[derive(Clone, Copy, Debug)]
enum CloneHow {
    /// Offsets as generated (usually unaligned, often differently aligned).
    Unaligned,
    /// Block-aligned source and destination.
    Aligned,
    /// The same misalignment on both sides (shares whole blocks, copies the edges).
    SameAlign,
    /// The whole file onto offset 0.
    Whole,
    /// Into the same file, after the source range, with the same misalignment.
    SelfAfter,
    /// Into the same file, after the source range, at any offset.
    SelfAfterUnaligned,
}

#[derive(Clone, Debug)]
enum Op {
    Create(u8, u8),
    Mkdir(u8, u8),
    Symlink(u8, u8),
    Unlink(u8),
    Rmdir(u8),
    Rename {
        src: u8,
        dir: u8,
        name: u8,
        flags: u8,
    },
    Link(u8, u8, u8),
    Open(u8),
    Release(u8),
    Write {
        f: u8,
        off: Pos,
        len: Pos,
        seed: u8,
    },
    Truncate(u8, Pos),
    Punch(u8, Pos, Pos),
    Zero(u8, Pos, Pos, bool),
    Alloc(u8, Pos, Pos, bool),
    Clone {
        src: u8,
        dst: u8,
        how: CloneHow,
        a: Pos,
        b: Pos,
        len: Pos,
    },
    Commit,
    Reopen,
}

const NAMES: [&str; 4] = ["a", "b", "c", "d"];

fn clone_how() -> impl Strategy<Value = CloneHow> {
    prop_oneof![
        Just(CloneHow::Unaligned),
        Just(CloneHow::Aligned),
        Just(CloneHow::SameAlign),
        Just(CloneHow::Whole),
        Just(CloneHow::SelfAfter),
        Just(CloneHow::SelfAfterUnaligned),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let n = 0u8..4;
    let i = any::<u8>();
    prop_oneof![
        4 => (i, n.clone()).prop_map(|(d, n)| Op::Create(d, n)),
        2 => (i, n.clone()).prop_map(|(d, n)| Op::Mkdir(d, n)),
        1 => (i, n.clone()).prop_map(|(d, n)| Op::Symlink(d, n)),
        2 => i.prop_map(Op::Unlink),
        1 => i.prop_map(Op::Rmdir),
        2 => (i, i, n.clone(), 0u8..4)
            .prop_map(|(src, dir, name, flags)| Op::Rename { src, dir, name, flags }),
        1 => (i, i, n.clone()).prop_map(|(f, d, n)| Op::Link(f, d, n)),
        1 => i.prop_map(Op::Open),
        1 => i.prop_map(Op::Release),
        10 => (i, pos(5), pos(3), i)
            .prop_map(|(f, off, len, seed)| Op::Write { f, off, len, seed }),
        3 => (i, pos(5)).prop_map(|(f, s)| Op::Truncate(f, s)),
        2 => (i, pos(5), pos(3)).prop_map(|(f, o, l)| Op::Punch(f, o, l)),
        2 => (i, pos(5), pos(3), any::<bool>()).prop_map(|(f, o, l, k)| Op::Zero(f, o, l, k)),
        1 => (i, pos(5), pos(3), any::<bool>()).prop_map(|(f, o, l, k)| Op::Alloc(f, o, l, k)),
        8 => (i, i, clone_how(), pos(4), pos(4), pos(4))
            .prop_map(|(src, dst, how, a, b, len)| Op::Clone { src, dst, how, a, b, len }),
        2 => Just(Op::Commit),
        1 => Just(Op::Reopen),
    ]
}

fn pick<T: Clone>(v: &[T], i: u8) -> Option<T> {
    if v.is_empty() {
        None
    } else {
        Some(v[usize::from(i) % v.len()].clone())
    }
}

/// Every regular file an operation may name: linked files by path, open files by handle.
fn file_targets(h: &Harness) -> Vec<Target> {
    let mut v: Vec<Target> = h.model.files().into_iter().map(Target::Path).collect();
    v.extend((0..h.handles.len()).map(Target::Handle));
    v
}

fn target_size(h: &Harness, t: &Target) -> u64 {
    let ino = match t {
        Target::Path(p) => h.model.paths[p],
        Target::Handle(i) => h.handles[*i],
    };
    h.model.file(ino).len() as u64
}

fn same_file(h: &Harness, a: &Target, b: &Target) -> bool {
    let ino = |t: &Target| match t {
        Target::Path(p) => h.model.paths[p],
        Target::Handle(i) => h.handles[*i],
    };
    ino(a) == ino(b)
}

/// Turn a generated operation into a concrete action against the model's current state.
fn resolve(h: &Harness, op: &Op) -> Option<Act> {
    let bs = h.bs;
    let dirs = h.model.dirs();
    let entries = h.model.entries();
    let files = file_targets(h);
    let path_in = |d: u8, n: u8| pick(&dirs, d).map(|dir| join(&dir, NAMES[usize::from(n)]));
    Some(match *op {
        Op::Create(d, n) => Act::Create(path_in(d, n)?),
        Op::Mkdir(d, n) => Act::Mkdir(path_in(d, n)?),
        Op::Symlink(d, n) => Act::Symlink(path_in(d, n)?, format!("target-{d}").into_bytes()),
        Op::Unlink(e) => Act::Unlink(pick(&entries, e)?),
        Op::Rmdir(e) => Act::Rmdir(pick(&entries, e)?),
        Op::Rename {
            src,
            dir,
            name,
            flags,
        } => Act::Rename(
            pick(&entries, src)?,
            path_in(dir, name)?,
            RenameFlags {
                noreplace: flags == 1,
                exchange: flags == 2,
            },
        ),
        Op::Link(f, d, n) => {
            let linkable: Vec<String> = entries
                .iter()
                .filter(|p| !h.model.is_dir(p))
                .cloned()
                .collect();
            Act::Link(pick(&linkable, f)?, path_in(d, n)?)
        }
        Op::Open(f) => Act::Open(pick(&h.model.files(), f)?),
        Op::Release(i) => {
            if h.handles.is_empty() {
                return None;
            }
            Act::Release(usize::from(i) % h.handles.len())
        }
        Op::Write { f, off, len, seed } => {
            let off = off.at(bs);
            let len = len.at(bs) as usize;
            Act::Write(
                pick(&files, f)?,
                off,
                pattern(u64::from(seed) << 32 | off, len),
            )
        }
        Op::Truncate(f, size) => Act::Truncate(pick(&files, f)?, size.at(bs)),
        Op::Punch(f, o, l) => Act::Punch(pick(&files, f)?, o.at(bs), l.at(bs)),
        Op::Zero(f, o, l, k) => Act::ZeroRange(pick(&files, f)?, o.at(bs), l.at(bs), k),
        Op::Alloc(f, o, l, k) => Act::Allocate(pick(&files, f)?, o.at(bs), l.at(bs), k),
        Op::Clone {
            src,
            dst,
            how,
            a,
            b,
            len,
        } => {
            let s = pick(&files, src)?;
            let mut d = pick(&files, dst)?;
            let (mut so, mut doff, mut n) = (a.at(bs), b.at(bs), len.at(bs));
            match how {
                CloneHow::Unaligned => {}
                CloneHow::Aligned => {
                    so -= so % bs;
                    doff -= doff % bs;
                    n = n.div_ceil(bs) * bs;
                }
                CloneHow::SameAlign => doff = doff - doff % bs + so % bs,
                CloneHow::Whole => {
                    so = 0;
                    doff = 0;
                    n = u64::MAX;
                }
                CloneHow::SelfAfter | CloneHow::SelfAfterUnaligned => {
                    d = s.clone();
                    let size = target_size(h, &s);
                    let copied = n.min(size.saturating_sub(so));
                    doff = if matches!(how, CloneHow::SelfAfter) {
                        so + copied.div_ceil(bs) * bs + u64::from(b.blocks % 2) * bs
                    } else {
                        so + copied + b.at(bs) % (2 * bs)
                    };
                }
            }
            if same_file(h, &s, &d) && !matches!(how, CloneHow::Whole) {
                // Keep self-clones mostly legal; overlapping ones are still tried sometimes.
                let size = target_size(h, &s);
                let copied = n.min(size.saturating_sub(so));
                if so < doff + copied && doff < so + copied && a.rnd % 4 != 0 {
                    doff = so + copied + u64::from(b.rnd) % bs;
                }
            }
            Act::Clone(s, so, d, doff, n)
        }
        Op::Commit => Act::Commit,
        Op::Reopen => Act::Reopen,
    })
}

fn run(bs: u32, ops: &[Op]) {
    let mut h = Harness::new(bs);
    for (step, op) in ops.iter().enumerate() {
        let Some(act) = resolve(&h, op) else { continue };
        let _ = h.apply(&act);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h.verify()));
        if let Err(e) = result {
            eprintln!("after step {step}: {act:?}");
            std::panic::resume_unwind(e);
        }
    }
    h.apply(&Act::Commit).expect("final commit");
    h.verify_stats();
    h.apply(&Act::Reopen).expect("final reopen");
    h.verify();
}

fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    }
}

/// The same properties on each metadata engine (`redb::…`, `mem::…`).
macro_rules! model_props {
    ($engine:ident, $kind:expr) => {
        mod $engine {
            use super::*;

            fn on_engine(bs: u32, ops: &[Op]) {
                engines::run_on($kind, || run(bs, ops));
            }

            proptest! {
                #![proptest_config(cases(256))]
                #[test]
                fn prop_model_bs4k(ops in prop::collection::vec(op(), 1..70)) {
                    on_engine(4096, &ops);
                }
            }

            proptest! {
                #![proptest_config(cases(64))]
                #[test]
                fn prop_model_bs16k(ops in prop::collection::vec(op(), 1..60)) {
                    on_engine(16384, &ops);
                }
            }

            proptest! {
                #![proptest_config(cases(48))]
                #[test]
                fn prop_model_bs64k(ops in prop::collection::vec(op(), 1..50)) {
                    on_engine(65536, &ops);
                }
            }
        }
    };
}

model_props!(redb, cowstore::EngineKind::Redb);
model_props!(mem, cowstore::EngineKind::Mem);
