//! Open file handles and the writeback-error sequence each has seen.
//!
//! Linux reports a writeback error to every descriptor open when it happened, once each
//! (errseq_t): a later fsync on that descriptor fails even if a commit in between succeeded,
//! because data written through it may be lost. The store counts failed commits
//! ([`cowstore::Store::error_seq`]); each handle remembers the count it has reported up to.

use parking_lot::{Mutex, MutexGuard};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Handles {
    next: AtomicU64,
    /// Handle → the store's error sequence this handle has reported up to.
    seen: Mutex<HashMap<u64, u64>>,
}

impl Handles {
    fn table(&self) -> MutexGuard<'_, HashMap<u64, u64>> {
        self.seen.lock()
    }

    /// A new handle, opened when the store's error sequence is `seq`.
    pub fn open(&self, seq: u64) -> u64 {
        // 0 stays "no handle" (what directories and old kernels' requests carry).
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.table().insert(fh, seq);
        fh
    }

    /// Whether commits failed since this handle last reported (or was opened); it reports now.
    /// Unknown handles (0, directories) have nothing of their own to report.
    pub fn take_error(&self, fh: u64, seq: u64) -> bool {
        match self.table().get_mut(&fh) {
            Some(seen) if *seen < seq => {
                *seen = seq;
                true
            }
            _ => false,
        }
    }

    pub fn close(&self, fh: u64) {
        self.table().remove(&fh);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_handle_reports_an_error_once() {
        let h = Handles::default();
        let early = h.open(0);
        assert!(!h.take_error(early, 0));
        let late = h.open(1);
        assert!(
            h.take_error(early, 1),
            "the failure happened while it was open"
        );
        assert!(!h.take_error(early, 1), "reported once");
        assert!(!h.take_error(late, 1), "opened after the failure");
        assert!(h.take_error(late, 2));
        h.close(early);
        assert!(!h.take_error(early, 5), "a closed handle reports nothing");
        assert!(!h.take_error(0, 5));
    }
}
