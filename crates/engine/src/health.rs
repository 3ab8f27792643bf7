//! The engine's health: the first fatal failure — a storage error (a failed group commit, index
//! transaction or erasure: the disk can no longer be trusted to hold what it is given) or a
//! background thread that panicked. From that moment the server is not ready (`/readyz` 503),
//! the writer refuses every later commit without touching the disk (an fsync that failed is
//! never retried on the same file as if it had succeeded), and the server ends the process with
//! [`FatalKind::exit_code`] so that a supervisor restarts it: recovery then replays the log, so
//! every acknowledged event is back and nothing unacknowledged is believed.
//!
//! Every long-lived thread of the engine is started through [`Health::spawn`], which turns a
//! panic into a [`FatalKind::Thread`] failure instead of a thread that silently stops answering.
//! The failure is recorded by a panic hook, at the panic itself, before unwinding drops the
//! thread's pending replies (whose waiters answer 503 at once): whoever sees that 503 and asks
//! `/readyz` already finds it failed. Panics caught on purpose where they happen (a rule's
//! script, `trimtab_util::panics::catch`) are not failures.

use std::cell::RefCell;
use std::sync::{Arc, Once, OnceLock};
use std::thread::JoinHandle;

thread_local! {
    /// The health and name of the supervised thread running here.
    static SUPERVISED: RefCell<Option<(Arc<Health>, String)>> = const { RefCell::new(None) };
}

/// Installs (once per process) the hook that reports an uncaught panic of a supervised thread,
/// then runs the hook that was there before (which prints the message).
fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !trimtab_util::panics::is_caught() {
                let _ = SUPERVISED.try_with(|s| {
                    if let Ok(s) = s.try_borrow() {
                        if let Some((health, name)) = s.as_ref() {
                            let msg = trimtab_util::panics::message(info.payload());
                            let at = info
                                .location()
                                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                                .unwrap_or_default();
                            health.fail(FatalKind::Thread, name, format!("panicked{at}: {msg}"));
                        }
                    }
                });
            }
            previous(info);
        }));
    });
}

/// What kind of failure ended the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatalKind {
    /// Writing to the data dir failed (I/O error, full disk).
    Storage,
    /// An engine thread panicked.
    Thread,
}

impl FatalKind {
    /// The process exit code for this failure (sysexits.h: `EX_IOERR`, `EX_SOFTWARE`).
    pub fn exit_code(self) -> u8 {
        match self {
            FatalKind::Storage => 74,
            FatalKind::Thread => 70,
        }
    }

    /// Its name in `/readyz`, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            FatalKind::Storage => "storage",
            FatalKind::Thread => "thread",
        }
    }
}

/// The first fatal failure.
#[derive(Debug, Clone)]
pub struct Fatal {
    pub kind: FatalKind,
    /// Where: the operation (`group commit`, `index transaction`, `erasure`) or thread name.
    pub what: String,
    /// The error (server-side detail: logged, never sent to clients).
    pub message: String,
}

/// Shared by the engine's threads and the server.
#[derive(Default)]
pub struct Health {
    fatal: OnceLock<Fatal>,
    wake: tokio::sync::Notify,
    gauge: OnceLock<prometheus::IntGaugeVec>,
}

impl Health {
    pub fn new() -> Arc<Health> {
        Arc::new(Health::default())
    }

    /// Reports failures as `trimtab_fatal{kind}` (1 once failed).
    pub fn set_gauge(&self, g: prometheus::IntGaugeVec) {
        let _ = self.gauge.set(g);
    }

    /// Records a fatal failure. Only the first counts (and is logged, once); returns whether
    /// this was it.
    pub fn fail(&self, kind: FatalKind, what: &str, message: impl Into<String>) -> bool {
        let f = Fatal {
            kind,
            what: what.to_string(),
            message: message.into(),
        };
        if self.fatal.set(f).is_err() {
            return false;
        }
        let f = self.fatal.get().expect("just set");
        tracing::error!(
            kind = kind.as_str(),
            what = %f.what,
            error = %f.message,
            exit_code = kind.exit_code(),
            "fatal: {} failed; not ready, refusing writes, and exiting so that a supervisor restarts the server (recovery replays the log)",
            f.what
        );
        if let Some(g) = self.gauge.get() {
            g.with_label_values(&[kind.as_str()]).set(1);
        }
        // A stored permit: the server's waiter wakes even if it starts waiting later.
        self.wake.notify_one();
        true
    }

    /// The fatal failure, if one happened.
    pub fn fatal(&self) -> Option<&Fatal> {
        self.fatal.get()
    }

    pub fn is_failed(&self) -> bool {
        self.fatal.get().is_some()
    }

    /// Resolves at the first fatal failure (for one waiter: the server).
    pub async fn failed(&self) -> Fatal {
        loop {
            if let Some(f) = self.fatal.get() {
                return f.clone();
            }
            self.wake.notified().await;
        }
    }

    /// Starts a named thread whose panic is a [`FatalKind::Thread`] failure.
    pub fn spawn(
        self: &Arc<Self>,
        name: &str,
        f: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<JoinHandle<()>> {
        install_hook();
        let health = self.clone();
        let thread = name.to_string();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                SUPERVISED.with(|s| *s.borrow_mut() = Some((health.clone(), thread.clone())));
                // The hook has recorded the failure by now; this only keeps the panic from
                // reaching whoever joins the thread (and records it if the hook could not).
                if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                    let msg = trimtab_util::panics::message(panic.as_ref());
                    health.fail(FatalKind::Thread, &thread, format!("panicked: {msg}"));
                }
                SUPERVISED.with(|s| s.borrow_mut().take());
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_thread_is_a_fatal_failure_and_only_the_first_counts() {
        let h = Health::new();
        assert!(!h.is_failed());
        let t = h.spawn("trimtab-test", || panic!("boom")).expect("spawn");
        t.join().expect("the panic is caught");
        let f = h.fatal().expect("failed");
        assert_eq!(f.kind, FatalKind::Thread);
        assert_eq!(f.what, "trimtab-test");
        assert!(f.message.contains("boom"), "{}", f.message);
        assert!(!h.fail(FatalKind::Storage, "group commit", "EIO"));
        assert_eq!(h.fatal().expect("failed").kind, FatalKind::Thread);
        assert_eq!(FatalKind::Thread.exit_code(), 70);
        assert_eq!(FatalKind::Storage.exit_code(), 74);
    }

    #[test]
    fn the_failure_is_recorded_before_the_thread_unwinds() {
        struct Probe(Arc<Health>, std::sync::mpsc::Sender<bool>);
        impl Drop for Probe {
            fn drop(&mut self) {
                // Dropped while unwinding, as a pending reply would be.
                let _ = self.1.send(self.0.is_failed());
            }
        }
        let h = Health::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let probe = Probe(h.clone(), tx);
        h.spawn("trimtab-test", move || {
            let _p = probe;
            panic!("boom");
        })
        .expect("spawn")
        .join()
        .expect("caught");
        assert!(
            rx.recv().expect("dropped"),
            "not failed yet when the thread's values dropped"
        );
    }

    #[test]
    fn a_panic_caught_on_purpose_is_not_a_failure() {
        let h = Health::new();
        h.spawn("trimtab-test", || {
            let r = trimtab_util::panics::catch(|| panic!("a rule's script"));
            assert!(r.is_err());
        })
        .expect("spawn")
        .join()
        .expect("join");
        assert!(h.fatal().is_none());
    }

    #[test]
    fn a_thread_that_returns_is_not_a_failure() {
        let h = Health::new();
        h.spawn("trimtab-test", || {})
            .expect("spawn")
            .join()
            .expect("join");
        assert!(h.fatal().is_none());
    }

    #[test]
    fn the_waiter_wakes_even_when_it_starts_after_the_failure() {
        let h = Health::new();
        h.fail(FatalKind::Storage, "group commit", "EIO");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let f = rt.block_on(h.failed());
        assert_eq!(f.kind, FatalKind::Storage);
        assert_eq!(f.what, "group commit");
    }
}
