//! Replies that wait for the kernel: work that asks the kernel for something it does by sending
//! requests of its own (a writeback, whose WRITEs the request threads serve) runs here, on one
//! thread of its own, and replies when it is done. On a request thread it could deadlock: with
//! every request thread waiting for the kernel, nobody would serve what the kernel waits on.

use log::warn;
use parking_lot::Mutex;
use std::sync::mpsc::{self, Sender};

type Job = Box<dyn FnOnce() + Send>;

/// The deferred-reply thread, started at the first job (most mounts never need it) and again
/// if it ever went away.
#[derive(Debug, Default)]
pub struct Deferred {
    tx: Mutex<Option<Sender<Job>>>,
}

impl Deferred {
    /// Run `job` on the deferred thread. If no thread can be started, it runs here, as the
    /// last resort (it then stalls this request thread for as long as the job waits).
    pub fn run(&self, job: impl FnOnce() + Send + 'static) {
        let mut job: Job = Box::new(job);
        let mut tx = self.tx.lock();
        for _ in 0..2 {
            if tx.is_none() {
                *tx = start();
            }
            let Some(sender) = tx.as_ref() else { break };
            match sender.send(job) {
                Ok(()) => return,
                // The thread is gone (it cannot panic out of its loop, but be safe): again.
                Err(mpsc::SendError(back)) => {
                    job = back;
                    *tx = None;
                }
            }
        }
        drop(tx);
        job();
    }
}

fn start() -> Option<Sender<Job>> {
    let (tx, rx) = mpsc::channel::<Job>();
    let spawned = std::thread::Builder::new()
        .name("cowfs-deferred".into())
        .spawn(move || {
            for job in rx {
                job();
            }
        });
    match spawned {
        Ok(_) => Some(tx),
        Err(e) => {
            warn!("cannot start the deferred-reply thread: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;
    use std::time::Duration;

    #[test]
    fn jobs_run_in_order_off_the_calling_thread() {
        let d = Deferred::default();
        let (tx, rx) = channel();
        let here = std::thread::current().id();
        for i in 0..3 {
            let tx = tx.clone();
            d.run(move || {
                let _ = tx.send((i, std::thread::current().id()));
            });
        }
        for i in 0..3 {
            let (n, on) = rx.recv_timeout(Duration::from_secs(5)).expect("job ran");
            assert_eq!(n, i);
            assert_ne!(on, here);
        }
    }
}
