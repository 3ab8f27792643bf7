//! Backtests of a running server: one at a time, each on its own thread that runs only on CPU
//! time the loop leaves idle, readable while it runs ([`Job::view`]), cancellable, the last few
//! kept for `GET /v1/rules/backtest/{id}`.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::backtest::{self, Outcome, Progress, Request};
use super::{LabConfig, LabError};
use trimtab_store::Store;

/// Finished backtests kept for their ids.
const KEPT: usize = 8;

/// Why a backtest did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("a backtest is already running ({0}); wait for it or cancel it")]
    Busy(String),
    #[error(transparent)]
    Lab(#[from] LabError),
}

/// One backtest.
pub struct Job {
    pub id: String,
    pub progress: Progress,
    pub started_ms: i64,
    /// `None` while it runs.
    outcome: Mutex<Option<Result<Outcome, String>>>,
    finished: Condvar,
}

impl Job {
    /// Waits up to `timeout` for the end; whether it ended.
    pub fn wait(&self, timeout: Duration) -> bool {
        let g = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        let (g, _) = self
            .finished
            .wait_timeout_while(g, timeout, |o| o.is_none())
            .unwrap_or_else(|p| p.into_inner());
        g.is_some()
    }

    pub fn running(&self) -> bool {
        self.outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }

    /// `{id, state, progress, result?, error?}`; state `running`, `done`, `cancelled` or
    /// `failed`.
    pub fn view(&self) -> serde_json::Value {
        let o = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        let cancelled = self.progress.cancel.load(Ordering::Relaxed);
        let mut v = serde_json::json!({
            "id": self.id,
            "started_ms": self.started_ms,
            "progress": self.progress.snapshot(),
        });
        let state = match &*o {
            None => "running",
            Some(Ok(r)) => {
                v["result"] = serde_json::to_value(r).unwrap_or_default();
                if cancelled {
                    "cancelled"
                } else {
                    "done"
                }
            }
            Some(Err(e)) => {
                v["error"] = e.clone().into();
                "failed"
            }
        };
        v["state"] = state.into();
        v
    }
}

/// The server's backtests.
#[derive(Default)]
pub struct Backtests {
    jobs: Mutex<VecDeque<Arc<Job>>>,
}

impl Backtests {
    /// Compiles the candidate with the installed rules of `installed` (a compile error is
    /// answered at once) and starts replaying on a thread of its own.
    pub fn start(
        &self,
        store: Arc<Store>,
        cfg: LabConfig,
        installed: PathBuf,
        req: Request,
    ) -> Result<Arc<Job>, StartError> {
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(j) = jobs.iter().find(|j| j.running()) {
            return Err(StartError::Busy(j.id.clone()));
        }
        let (set, world) = backtest::world(cfg, &installed, &req)?;
        let job = Arc::new(Job {
            id: hex::encode(crate::pipeline::Decision::new_id().0),
            progress: Progress::default(),
            started_ms: trimtab_util::now_ms(),
            outcome: Mutex::new(None),
            finished: Condvar::new(),
        });
        let j = job.clone();
        std::thread::Builder::new()
            .name("trimtab-backtest".into())
            .spawn(move || {
                lower_priority();
                let _keep = set;
                let outcome = backtest::collect(&store, &req, &j.progress)
                    .map(|(audience, truncated)| {
                        backtest::replay(&world, &req, &audience, truncated, &j.progress)
                    })
                    .map_err(|e| e.to_string());
                *j.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
                j.finished.notify_all();
            })
            .map_err(|e| LabError::Io(format!("cannot start the backtest thread: {e}")))?;
        jobs.push_back(job.clone());
        while jobs.len() > KEPT {
            jobs.pop_front();
        }
        Ok(job)
    }

    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|j| j.id == id)
            .cloned()
    }
}

/// The backtest runs only on CPU time the loop leaves idle (Linux: `SCHED_IDLE` for this
/// thread, or nice +19 where that is refused). Nice +10 alone was not enough on two cores:
/// live WebSocket acks went from p50 0.4 to 1.4 ms while a backtest ran (BENCHMARKS.md).
fn lower_priority() {
    if !crate::sched::set_idle(0, true) {
        crate::sched::set_nice(19);
    }
}
