//! Scheduling calls on this process's threads (Linux; elsewhere they do nothing and report
//! failure): a thread's nice value and its policy, `SCHED_IDLE` or back to `SCHED_OTHER`, and
//! the background jobs' priority ([`BACKGROUND_NICE`], [`background_pool`]). Used by the
//! indexer ([`crate::pipeline`]'s priority), the rule lab's backtest ([`crate::lab`]), the
//! segmenter ([`crate::segments::service`]) and the model trainer
//! ([`crate::bandits::trainer`]), which all yield the CPU to the threads on the
//! acknowledgement's path.

pub(crate) use imp::*;

/// Nice value of the background jobs — the segmenter (reading, decoding and clustering every
/// user) and the model trainer (fitting a click model on up to `learn.max_rows` decisions):
/// on no answer's path, so on a busy machine they wait for the shards, the writer and the
/// HTTP workers, and on an idle one they still run at full speed.
pub const BACKGROUND_NICE: i32 = 19;

/// A rayon pool of `threads` threads (0: one per CPU) named `name`, each at
/// [`BACKGROUND_NICE`] from its start: parallel work installed in it (the segmenter's
/// clustering, candle's matrix products during training, which run on the current pool) is
/// background work too.
pub fn background_pool(name: &'static str, threads: usize) -> std::io::Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(move |_| name.to_string())
        .start_handler(|_| set_nice(BACKGROUND_NICE))
        .build()
        .map_err(std::io::Error::other)
}

#[cfg(target_os = "linux")]
mod imp {
    /// The calling thread's id.
    pub fn gettid() -> i32 {
        // SAFETY: gettid has no preconditions and cannot fail.
        unsafe { libc::syscall(libc::SYS_gettid) as i32 }
    }

    /// Sets the calling thread's nice value (Linux schedules threads as tasks).
    pub fn set_nice(nice: i32) {
        // SAFETY: setpriority on our own thread id changes only this thread's nice value and
        // reports errors by its return value.
        unsafe {
            let _ = libc::setpriority(libc::PRIO_PROCESS, gettid() as libc::id_t, nice);
        }
    }

    /// The calling thread's nice value (tests check what a thread was given).
    #[cfg(test)]
    pub fn nice() -> i32 {
        // SAFETY: getpriority only reads our own thread's nice value (-1 is also a valid
        // value; errno is not needed: the thread id is our own, so the call cannot fail).
        unsafe { libc::getpriority(libc::PRIO_PROCESS, gettid() as libc::id_t) }
    }

    /// Puts thread `tid` (0: the calling one) at `SCHED_IDLE` or back at `SCHED_OTHER` (its
    /// nice value is kept); whether it worked.
    pub fn set_idle(tid: i32, idle: bool) -> bool {
        let policy = if idle {
            libc::SCHED_IDLE
        } else {
            libc::SCHED_OTHER
        };
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a valid sched_param for the call's duration; the call changes
        // only the scheduling policy of a thread of this process and reports errors by its
        // return value.
        unsafe { libc::sched_setscheduler(tid, policy, &param) == 0 }
    }

    /// The policy of thread `tid` (0: the calling one).
    pub fn policy(tid: i32) -> i32 {
        // SAFETY: sched_getscheduler only reads the thread's policy.
        unsafe { libc::sched_getscheduler(tid) }
    }

    /// A throwaway thread at nice +10 goes to `SCHED_IDLE`; can another thread raise it back
    /// (what the writer will do to the indexer)?
    pub fn can_raise_from_idle() -> bool {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let probe = std::thread::Builder::new()
            .name("trimtab-probe".into())
            .spawn(move || {
                set_nice(10);
                let _ = tx.send(set_idle(0, true).then(gettid));
                let _ = done_rx.recv();
            });
        let Ok(probe) = probe else {
            return false;
        };
        let raised = match rx.recv() {
            Ok(Some(tid)) => set_idle(tid, false) && policy(tid) == libc::SCHED_OTHER,
            _ => false,
        };
        drop(done_tx);
        let _ = probe.join();
        raised
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    pub fn gettid() -> i32 {
        0
    }
    pub fn set_nice(_: i32) {}
    #[cfg(test)]
    pub fn nice() -> i32 {
        0
    }
    pub fn set_idle(_: i32, _: bool) -> bool {
        false
    }
    pub fn can_raise_from_idle() -> bool {
        false
    }
}
