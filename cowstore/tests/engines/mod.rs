//! Runs a test file's tests once per metadata engine (issue 11: the seam is real only if the
//! store passes the same tests on redb and on the in-memory log engine). `per_engine!(a, b)`
//! makes `redb::a`, `mem::a`, `redb::b`, `mem::b`; the tests build their stores with
//! [`mkfs_opts`], which picks the engine of the test that is running.

#![allow(dead_code)]

use cowstore::{EngineKind, MkfsOptions};
use std::cell::Cell;

thread_local! {
    static ENGINE: Cell<EngineKind> = const { Cell::new(EngineKind::Redb) };
}

/// The engine of the running test.
pub fn engine() -> EngineKind {
    ENGINE.with(Cell::get)
}

/// mkfs options for the running test's engine.
pub fn mkfs_opts(block_size: u32) -> MkfsOptions {
    MkfsOptions {
        block_size,
        engine: engine(),
    }
}

/// What a test function returns: nothing, or a result whose error fails the test.
pub trait Outcome {
    fn finish(self);
}

impl Outcome for () {
    fn finish(self) {}
}

impl<E: std::fmt::Debug> Outcome for Result<(), E> {
    fn finish(self) {
        if let Err(e) = self {
            panic!("test failed: {e:?}");
        }
    }
}

pub fn run_on<T: Outcome>(engine: EngineKind, test: impl FnOnce() -> T) {
    ENGINE.with(|c| c.set(engine));
    test().finish();
}

/// One `#[test]` per engine for each named function of the file.
#[macro_export]
macro_rules! per_engine {
    ($($name:ident),* $(,)?) => {
        mod redb {
            $(
                #[test]
                fn $name() {
                    $crate::engines::run_on(cowstore::EngineKind::Redb, super::$name)
                }
            )*
        }
        mod mem {
            $(
                #[test]
                fn $name() {
                    $crate::engines::run_on(cowstore::EngineKind::Mem, super::$name)
                }
            )*
        }
    };
}
