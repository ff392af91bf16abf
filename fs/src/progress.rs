//! Progress of the tree operations the daemon runs for `cowfs snapshot` and `--delete`. The
//! snapshot ioctl cannot report progress itself (one request, one answer), so the command
//! puts an id of its choosing into the ioctl's argument, the daemon publishes where that
//! operation is after each of its batches under that id ([`TreeOps`]), and the command reads
//! it over the control socket (`progress ID`) while its ioctl runs. An id, not the caller's
//! pid: two commands of one process, or of processes in other pid namespaces, stay apart.
//!
//! A finished operation's last report stays readable for [`KEEP_FINISHED`], so the command can
//! show where it ended; at most [`MAX_FINISHED`] are kept.

use cowstore::{TreePhase, TreeProgress};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long the last report of a finished operation stays readable.
pub const KEEP_FINISHED: Duration = Duration::from_secs(30);
/// Finished operations kept at most (the oldest go first).
pub const MAX_FINISHED: usize = 64;

/// What `progress ID` answers: one operation's last report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpProgress {
    /// `snapshot` or `delete`.
    pub op: String,
    /// `counting`, then `copying` (a snapshot); `checking`, then `removing` (a removal).
    pub phase: String,
    /// Entries done in this phase.
    pub done: u64,
    /// Entries this phase does in all, when known (counting and checking have none).
    pub total: Option<u64>,
    /// The operation has ended (its ioctl answered, or is answering): this is its last report.
    pub finished: bool,
}

/// The phase's name in [`OpProgress::phase`].
pub fn phase_name(p: TreePhase) -> &'static str {
    match p {
        TreePhase::Counting => "counting",
        TreePhase::Copying => "copying",
        TreePhase::Checking => "checking",
        TreePhase::Removing => "removing",
    }
}

struct Entry {
    progress: OpProgress,
    finished_at: Option<Instant>,
}

/// The operations running (and recently finished), by id.
#[derive(Default)]
pub struct TreeOps {
    ops: Mutex<HashMap<u32, Entry>>,
}

impl std::fmt::Debug for TreeOps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TreeOps")
            .field("ops", &self.ops.lock().len())
            .finish()
    }
}

impl TreeOps {
    /// Publish operation `op` under `id` (0: the caller asked for no progress, `None`). The
    /// returned guard takes its reports and marks it finished when dropped. An id in use is
    /// taken over (the command chose it at random; a clash only mixes up two progress bars).
    pub fn start(&self, id: u32, op: &'static str) -> Option<Running<'_>> {
        if id == 0 {
            return None;
        }
        let mut ops = self.ops.lock();
        prune(&mut ops, Instant::now());
        ops.insert(
            id,
            Entry {
                progress: OpProgress {
                    op: op.to_string(),
                    phase: "starting".into(),
                    done: 0,
                    total: None,
                    finished: false,
                },
                finished_at: None,
            },
        );
        Some(Running { ops: self, id })
    }

    /// The last report of operation `id`, if it runs or finished lately.
    pub fn get(&self, id: u32) -> Option<OpProgress> {
        let mut ops = self.ops.lock();
        prune(&mut ops, Instant::now());
        ops.get(&id).map(|e| e.progress.clone())
    }
}

/// Drop finished operations older than [`KEEP_FINISHED`], and the oldest beyond
/// [`MAX_FINISHED`].
fn prune(ops: &mut HashMap<u32, Entry>, now: Instant) {
    ops.retain(|_, e| {
        e.finished_at
            .is_none_or(|t| now.saturating_duration_since(t) < KEEP_FINISHED)
    });
    let mut finished: Vec<(Instant, u32)> = ops
        .iter()
        .filter_map(|(&id, e)| e.finished_at.map(|t| (t, id)))
        .collect();
    if finished.len() > MAX_FINISHED {
        finished.sort();
        for (_, id) in &finished[..finished.len() - MAX_FINISHED] {
            ops.remove(id);
        }
    }
}

/// A published operation; reports go through it, and dropping it marks the operation finished.
pub struct Running<'a> {
    ops: &'a TreeOps,
    id: u32,
}

impl Running<'_> {
    /// Where the store's operation is (after each of its batches).
    pub fn report(&self, p: TreeProgress) {
        if let Some(e) = self.ops.ops.lock().get_mut(&self.id) {
            e.progress.phase = phase_name(p.phase).into();
            e.progress.done = p.done;
            e.progress.total = p.total;
        }
    }
}

impl Running<'_> {
    /// The store's work is done and is being committed (which, for a large tree, takes a while
    /// of its own): the phase says so, the counts stay.
    pub fn committing(&self) {
        if let Some(e) = self.ops.ops.lock().get_mut(&self.id) {
            e.progress.phase = "committing".into();
        }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if let Some(e) = self.ops.ops.lock().get_mut(&self.id) {
            e.progress.finished = true;
            e.finished_at = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_kept_by_id_and_the_last_outlives_the_operation() {
        let ops = TreeOps::default();
        assert!(ops.start(0, "snapshot").is_none(), "id 0 asks for nothing");
        assert_eq!(ops.get(0), None);
        let a = ops.start(7, "snapshot");
        let b = ops.start(8, "delete");
        if let Some(a) = &a {
            a.report(TreeProgress {
                phase: TreePhase::Copying,
                done: 10,
                total: Some(20),
            });
        }
        if let Some(b) = &b {
            b.report(TreeProgress {
                phase: TreePhase::Checking,
                done: 3,
                total: None,
            });
        }
        let seen = ops.get(7);
        assert_eq!(
            seen,
            Some(OpProgress {
                op: "snapshot".into(),
                phase: "copying".into(),
                done: 10,
                total: Some(20),
                finished: false,
            })
        );
        assert_eq!(
            ops.get(8).map(|p| (p.op, p.phase)),
            Some(("delete".into(), "checking".into()))
        );
        drop(a);
        assert_eq!(
            ops.get(7).map(|p| (p.done, p.finished)),
            Some((10, true)),
            "the last report stays"
        );
        assert!(ops.get(8).is_some_and(|p| !p.finished));
        assert_eq!(ops.get(9), None);
    }

    #[test]
    fn finished_operations_are_forgotten_in_time_and_beyond_a_bound() {
        let ops = TreeOps::default();
        for id in 1..=(MAX_FINISHED as u32 + 10) {
            drop(ops.start(id, "snapshot"));
        }
        let kept = (1..=(MAX_FINISHED as u32 + 10))
            .filter(|&id| ops.get(id).is_some())
            .count();
        assert_eq!(kept, MAX_FINISHED);
        let mut map = ops.ops.lock();
        let later = Instant::now() + KEEP_FINISHED + Duration::from_secs(1);
        let running = Entry {
            progress: OpProgress {
                op: "delete".into(),
                phase: "removing".into(),
                done: 0,
                total: None,
                finished: false,
            },
            finished_at: None,
        };
        map.insert(1000, running);
        prune(&mut map, later);
        assert_eq!(map.len(), 1, "only the running one is left");
        assert!(map.contains_key(&1000));
    }
}
