//! The ingest pipeline: bounded queues, shard workers, the single writer, acknowledgements.
//!
//! ```text
//! api ──try_send──▶ shard[hash(user) % n] ──send──▶ writer ──commit──▶ reply (ack) + hub push
//! ```
//! - `submit_*` never blocks: a full shard queue is [`SubmitError::Overloaded`] (HTTP 429, WS
//!   `overloaded`), never a silent drop.
//! - Shards ([`shard`]) own their users' state: one thread per shard, so per-user order holds
//!   without locks. They update features, run rules, apply frequency caps and build decisions.
//! - The writer ([`writer`]) is the only redb writer: it drains its queue, commits many batches in
//!   one durable transaction, then answers each request and pushes its adjustments. An event is
//!   acknowledged only after that commit.

mod attribution;
pub mod decision;
mod shard;
mod writer;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, unbounded, Sender, TrySendError};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::config::Config;
use crate::delivery::Hub;
use crate::event::Event;
use crate::experiments::Experiments;
use crate::metrics::Metrics;
use crate::privacy::{Pseudonymizer, UserKey};
use crate::rules::Rules;
use crate::segments::service::SegmentService;
use crate::store::{EraseCounts, Store};

pub use decision::Decision;

/// Why a request could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitError {
    /// The owning shard's queue is full: retry later (nothing was queued).
    Overloaded,
    /// The pipeline is shutting down.
    ShuttingDown,
}

/// A request that was queued but failed (storage error, shutdown while waiting).
#[derive(Debug, Clone, thiserror::Error)]
pub enum PipelineError {
    #[error("storage failed: {0}")]
    Storage(String),
    #[error("the pipeline stopped before answering")]
    Stopped,
}

/// What happened to one batch of one user's events.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IngestOutcome {
    /// Newly stored events.
    pub accepted: usize,
    /// Events whose id had been seen before (already stored; not stored again).
    pub duplicates: usize,
    /// Ids of all events of the batch (stored or duplicate): the client may forget them.
    pub ids: Vec<String>,
}

/// A user's data, for export.
#[derive(Debug, Clone, Serialize)]
pub struct UserExport {
    pub state: serde_json::Value,
    pub events: Vec<serde_json::Value>,
    pub decisions: Vec<Decision>,
    /// Learning records of bandit decisions (context, propensity, outcomes).
    pub learning: Vec<serde_json::Value>,
}

pub type Reply<T> = oneshot::Sender<Result<T, PipelineError>>;
pub type Pending<T> = oneshot::Receiver<Result<T, PipelineError>>;

pub(crate) enum ShardMsg {
    Events {
        user: UserKey,
        events: Vec<Event>,
        reply: Reply<IngestOutcome>,
    },
    Decide {
        user: UserKey,
        slot: String,
        candidates: Vec<String>,
        reply: Reply<Decision>,
    },
    Export {
        user: UserKey,
        reply: Reply<Option<UserExport>>,
    },
    Erase {
        user: UserKey,
        reply: Reply<EraseCounts>,
    },
}

/// Handles to the pipeline's threads and queues. Dropping the senders (via [`Pipeline::shutdown`])
/// lets every thread drain its queue and exit.
pub struct Pipeline {
    shards: Mutex<Option<Vec<Sender<ShardMsg>>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    metrics: Arc<Metrics>,
    shard_count: usize,
}

/// What the pipeline's threads use: shared services, built once by the app.
pub struct Services {
    pub cfg: Arc<Config>,
    pub store: Arc<Store>,
    pub rules: Rules,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub pseudo: Pseudonymizer,
    pub experiments: Experiments,
    pub segments: Arc<SegmentService>,
    pub bandits: crate::bandits::Bandits,
    pub models: Arc<crate::learn::serving::Models>,
    /// The bandit learner's queue (None: decisions are logged but nothing learns online).
    pub learner: Option<Sender<crate::bandits::learner::LearnMsg>>,
}

impl Pipeline {
    pub fn start(s: Services) -> std::io::Result<Pipeline> {
        let Services {
            cfg,
            store,
            rules,
            hub,
            metrics,
            pseudo,
            experiments,
            segments,
            bandits,
            models,
            learner,
        } = s;
        let n = cfg.shard_count();
        let (wtx, wrx) = bounded(cfg.pipeline.writer_queue);
        let committed: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
        let mut threads = Vec::new();
        let mut shard_txs = Vec::new();
        let mut fail_txs = Vec::new();
        let mut shard_parts = Vec::new();
        for idx in 0..n {
            let (tx, rx) = bounded(cfg.pipeline.shard_queue);
            let (ftx, frx) = unbounded();
            shard_txs.push(tx);
            fail_txs.push(ftx);
            shard_parts.push((idx, rx, frx));
        }
        let w = writer::Writer::new(
            wrx,
            store.clone(),
            hub.clone(),
            metrics.clone(),
            committed.clone(),
            fail_txs,
            cfg.pipeline.max_commit_batch,
        );
        threads.push(
            std::thread::Builder::new()
                .name("trimtab-writer".into())
                .spawn(move || w.run())?,
        );
        for (idx, rx, frx) in shard_parts {
            let s = shard::Shard::new(shard::ShardParts {
                idx,
                rx,
                failed: frx,
                writer: wtx.clone(),
                store: store.clone(),
                rules: rules.clone(),
                cfg: cfg.clone(),
                metrics: metrics.clone(),
                pseudo: pseudo.clone(),
                committed: committed.clone(),
                hub: hub.clone(),
                live: shard::Live {
                    experiments: experiments.clone(),
                    segments: segments.clone(),
                    bandits: bandits.clone(),
                    models: models.clone(),
                    learner: learner.clone(),
                },
            });
            threads.push(
                std::thread::Builder::new()
                    .name(format!("trimtab-shard-{idx}"))
                    .spawn(move || s.run())?,
            );
        }
        Ok(Pipeline {
            shards: Mutex::new(Some(shard_txs)),
            threads: Mutex::new(threads),
            metrics,
            shard_count: n,
        })
    }

    fn send(&self, user: &UserKey, msg: ShardMsg) -> Result<(), SubmitError> {
        let guard = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        let Some(shards) = guard.as_ref() else {
            return Err(SubmitError::ShuttingDown);
        };
        let tx = &shards[user.shard(self.shard_count)];
        let r = tx.try_send(msg);
        self.metrics
            .queue_depth
            .with_label_values(&[&format!("shard{}", user.shard(self.shard_count))])
            .set(tx.len() as i64);
        match r {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(SubmitError::Overloaded),
            Err(TrySendError::Disconnected(_)) => Err(SubmitError::ShuttingDown),
        }
    }

    /// Queues one user's events; the receiver resolves once they are durable.
    pub fn submit_events(
        &self,
        user: UserKey,
        events: Vec<Event>,
    ) -> Result<Pending<IngestOutcome>, SubmitError> {
        let (reply, rx) = oneshot::channel();
        self.send(
            &user,
            ShardMsg::Events {
                user,
                events,
                reply,
            },
        )?;
        Ok(rx)
    }

    pub fn decide(
        &self,
        user: UserKey,
        slot: String,
        candidates: Vec<String>,
    ) -> Result<Pending<Decision>, SubmitError> {
        let (reply, rx) = oneshot::channel();
        self.send(
            &user,
            ShardMsg::Decide {
                user,
                slot,
                candidates,
                reply,
            },
        )?;
        Ok(rx)
    }

    pub fn export(&self, user: UserKey) -> Result<Pending<Option<UserExport>>, SubmitError> {
        let (reply, rx) = oneshot::channel();
        self.send(&user, ShardMsg::Export { user, reply })?;
        Ok(rx)
    }

    pub fn erase(&self, user: UserKey) -> Result<Pending<EraseCounts>, SubmitError> {
        let (reply, rx) = oneshot::channel();
        self.send(&user, ShardMsg::Erase { user, reply })?;
        Ok(rx)
    }

    /// Stops accepting, lets shards and the writer drain and commit everything queued, and
    /// joins their threads. Blocking: call from a non-async thread or `spawn_blocking`.
    pub fn shutdown(&self) {
        self.shards.lock().unwrap_or_else(|e| e.into_inner()).take();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}
