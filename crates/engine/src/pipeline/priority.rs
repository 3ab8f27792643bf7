//! The indexer's CPU priority. The indexer's work comes in bursts (one index transaction a
//! `pipeline.index_ms`); on a machine of few cores each burst delays the threads that carry an
//! event to its acknowledgement — the WebSocket loop's slow acks came once a second, with the
//! indexer's transactions (BENCHMARKS.md, thirteenth session). So while it keeps up, the
//! indexer runs at Linux's `SCHED_IDLE` policy: any other thread that wakes takes the CPU from
//! it at once. A thread at `SCHED_IDLE` gets almost no CPU on a busy machine, though, and the
//! writer waits for the indexer once [`super::indexer`]'s queue bound is reached; so when the
//! queue passes [`RAISE_AT`] the writer puts the indexer back to the normal policy (nice +10,
//! as before), and the indexer lowers itself again after a transaction that leaves less than
//! [`LOWER_BELOW`] queued.
//!
//! Leaving `SCHED_IDLE` needs a privilege (`CAP_SYS_NICE`, or an `RLIMIT_NICE` that allows
//! nice +10) that a container may not have: the policy is used only where a probe at start
//! showed that a thread put at `SCHED_IDLE` can be raised back. Elsewhere — and on systems
//! other than Linux — the indexer stays at nice +10.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use crate::sched as sys;

/// Queued bytes above which the writer raises an idle indexer back to the normal policy.
pub(crate) const RAISE_AT: usize = super::indexer::QUEUE_BYTES / 4;
/// Queued bytes below which the indexer lowers itself to `SCHED_IDLE` after a transaction.
pub(crate) const LOWER_BELOW: usize = super::indexer::QUEUE_BYTES / 16;

/// Shared by the indexer (which lowers itself) and the writer (which raises it).
#[derive(Default)]
pub(crate) struct Priority {
    /// The indexer's thread id; 0 until it has started.
    tid: AtomicI32,
    /// Whether the indexer is at `SCHED_IDLE` now.
    idle: AtomicBool,
    /// Whether this process may raise a thread from `SCHED_IDLE` (the probe's answer).
    may_idle: bool,
}

impl Priority {
    /// Probes once whether a thread at `SCHED_IDLE` can be raised back.
    pub(crate) fn probe() -> Priority {
        Priority {
            may_idle: sys::can_raise_from_idle(),
            ..Priority::default()
        }
    }

    /// Called on the indexer's thread when it starts: nice +10 (always), and `SCHED_IDLE`
    /// where it can be undone.
    pub(crate) fn start_indexer(&self) {
        self.tid.store(sys::gettid(), Ordering::Release);
        sys::set_nice(10);
        self.lower();
    }

    /// Called by the indexer after a transaction (`queued`: bytes still waiting).
    pub(crate) fn after_flush(&self, queued: usize) {
        if queued < LOWER_BELOW {
            self.lower();
        }
    }

    /// Called by the writer as it queues a batch (`queued`: bytes waiting with it).
    pub(crate) fn on_queued(&self, queued: usize) {
        if queued > RAISE_AT && self.idle.load(Ordering::Acquire) {
            let tid = self.tid.load(Ordering::Acquire);
            if tid != 0 && sys::set_idle(tid, false) {
                self.idle.store(false, Ordering::Release);
            }
        }
    }

    /// Whether the indexer is at `SCHED_IDLE` now (tests).
    #[cfg(test)]
    pub(crate) fn is_idle(&self) -> bool {
        self.idle.load(Ordering::Acquire)
    }

    fn lower(&self) {
        if self.may_idle && !self.idle.load(Ordering::Acquire) && sys::set_idle(0, true) {
            self.idle.store(true, Ordering::Release);
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// On a thread standing in for the indexer: it goes idle where the probe allows it, the
    /// writer's side raises it once the queue passes the bound (and not below it), and it
    /// lowers itself again only when little is left queued. Where the probe says no (no
    /// privilege), it never leaves the normal policy.
    #[test]
    fn the_indexer_idles_while_it_keeps_up_and_is_raised_when_it_falls_behind() {
        let p = Arc::new(Priority::probe());
        let (tx, rx) = std::sync::mpsc::channel::<&str>();
        let (back_tx, back_rx) = std::sync::mpsc::channel::<i32>();
        let q = p.clone();
        let t = std::thread::spawn(move || {
            q.start_indexer();
            let _ = back_tx.send(sys::policy(0));
            while let Ok(step) = rx.recv() {
                match step {
                    "flush-busy" => q.after_flush(LOWER_BELOW + 1),
                    "flush-light" => q.after_flush(LOWER_BELOW - 1),
                    _ => {}
                }
                let _ = back_tx.send(sys::policy(0));
            }
        });
        let expect_idle = if p.may_idle {
            libc::SCHED_IDLE
        } else {
            libc::SCHED_OTHER
        };
        assert_eq!(back_rx.recv().unwrap(), expect_idle);
        assert_eq!(p.is_idle(), p.may_idle);
        p.on_queued(RAISE_AT);
        assert_eq!(p.is_idle(), p.may_idle, "at the bound: not raised yet");
        p.on_queued(RAISE_AT + 1);
        assert!(!p.is_idle(), "past the bound: raised");
        tx.send("check").unwrap();
        assert_eq!(back_rx.recv().unwrap(), libc::SCHED_OTHER);
        tx.send("flush-busy").unwrap();
        assert_eq!(back_rx.recv().unwrap(), libc::SCHED_OTHER, "still behind");
        tx.send("flush-light").unwrap();
        assert_eq!(back_rx.recv().unwrap(), expect_idle, "caught up");
        drop(tx);
        t.join().unwrap();
    }
}
