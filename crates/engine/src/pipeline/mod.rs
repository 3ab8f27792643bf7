//! The ingest pipeline: bounded queues, shard workers, the single writer, acknowledgements.
//!
//! ```text
//! api ──try_send──▶ shard[hash(user) % n] ──one Work per drain──▶ writer ──commit──▶ acks + pushes
//!                    (decide::step per input)                      (group commit)     (socket queues)
//! ```
//! - `submit_*` never blocks: a full shard queue is [`SubmitError::Overloaded`] (HTTP 429, WS
//!   `overloaded`), never a silent drop.
//! - Shards ([`shard`]) own their users' state: one thread per shard, so per-user order holds
//!   without locks. Per input they run [`crate::decide::step`], seal what it produced with the
//!   user's key, and append rows to the drain's [`writer::Work`]; they checkpoint dirty users
//!   every `pipeline.checkpoint_ms`, on eviction and at shutdown, and replay a user's log tail
//!   past the checkpoint when loading them. Users at rest for `pipeline.compact_idle_ms` stay
//!   cached in a compressed form ([`compact`]).
//! - The writer ([`writer`]) is the only redb writer: it commits many shards' work in one
//!   durable transaction, then acknowledges (HTTP replies, WS `ack` frames straight into the
//!   socket's outbound queue) and pushes adjustments. An event is acknowledged only after that
//!   commit.

mod compact;
pub mod decision;
mod indexer;
mod priority;
mod seen;
mod shard;
mod writer;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, unbounded, Sender, TrySendError};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::config::Config;
use crate::delivery::{Hub, SocketTx};
use crate::experiments::Experiments;
use crate::metrics::Metrics;
use crate::segments::service::SegmentService;
use trimtab_privacy::{Pseudonymizer, UserKey};
use trimtab_rules::Rules;
use trimtab_store::Store;
use trimtab_wire::Event;

pub use decision::Decision;
pub use trimtab_store::{EraseCounts, StatRow};

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

/// What happened to one HTTP batch.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct IngestOutcome {
    /// Newly stored events.
    pub accepted: usize,
    /// Events whose id had been seen before (already stored; not stored again).
    pub duplicates: usize,
}

/// A user's data, for export.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct UserExport {
    pub state: serde_json::Value,
    pub events: Vec<serde_json::Value>,
    pub decisions: Vec<Decision>,
    /// Learning records of bandit decisions (context, propensity, outcomes).
    pub learning: Vec<serde_json::Value>,
}

/// A user as a cluster checkpoint carries them: the encoded state and the user's decisions and
/// learning records (plain, as the engine encodes them: the cluster seals the whole image
/// with the user's own key). The events stay in the cluster's stream. An empty `state`
/// restores a new user (what this node held of them goes).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct UserImage {
    pub state: Vec<u8>,
    pub decisions: Vec<([u8; 16], Vec<u8>)>,
    pub learn: Vec<([u8; 16], Vec<u8>)>,
}

pub type Reply<T> = oneshot::Sender<Result<T, PipelineError>>;
pub type Pending<T> = oneshot::Receiver<Result<T, PipelineError>>;

/// The completion of an HTTP batch spread over several shards: resolves once every part is
/// durable (or one failed).
pub struct Join {
    parts: AtomicUsize,
    accepted: AtomicUsize,
    duplicates: AtomicUsize,
    reply: Mutex<Option<Reply<IngestOutcome>>>,
}

impl Join {
    fn new(parts: usize, reply: Reply<IngestOutcome>) -> Arc<Join> {
        Arc::new(Join {
            parts: AtomicUsize::new(parts),
            accepted: AtomicUsize::new(0),
            duplicates: AtomicUsize::new(0),
            reply: Mutex::new(Some(reply)),
        })
    }

    /// One part is done (`Err`: the whole batch fails at once).
    pub(crate) fn part(&self, r: Result<IngestOutcome, PipelineError>) {
        match r {
            Ok(o) => {
                self.accepted.fetch_add(o.accepted, Ordering::Relaxed);
                self.duplicates.fetch_add(o.duplicates, Ordering::Relaxed);
                if self.parts.fetch_sub(1, Ordering::AcqRel) == 1 {
                    let outcome = IngestOutcome {
                        accepted: self.accepted.load(Ordering::Relaxed),
                        duplicates: self.duplicates.load(Ordering::Relaxed),
                    };
                    self.finish(Ok(outcome));
                }
            }
            Err(e) => self.finish(Err(e)),
        }
    }

    fn finish(&self, r: Result<IngestOutcome, PipelineError>) {
        let reply = self.reply.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(tx) = reply {
            let _ = tx.send(r);
        }
    }
}

/// Where the acknowledgement of a batch of events goes.
pub(crate) enum EventsReply {
    /// A part of an HTTP request.
    Http(Arc<Join>),
    /// A WebSocket message: the `ack` frame goes into the socket's own outbound queue, listing
    /// `extra` (ids accepted without storing, e.g. not consented) after the batch's ids.
    Ws {
        socket: SocketTx,
        extra: Vec<String>,
    },
}

pub(crate) enum ShardMsg {
    Events {
        /// Users of this shard and their events, each user's in order.
        users: Vec<(UserKey, Vec<Event>)>,
        reply: EventsReply,
        /// Push the adjustments they cause to the users' pages (false: state, decisions and
        /// statistics only — events a cluster node catches up on, long after they happened).
        push: bool,
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
    /// A copy of the user's current state (the rule lab's dry run): read, never changed.
    Peek {
        user: UserKey,
        reply: Reply<Option<Box<crate::features::UserState>>>,
    },
    /// Checkpoint every dirty user now; `done` is told once that is committed.
    Checkpoint { done: Sender<()> },
    /// Images of these users (of this shard) for a cluster checkpoint: read, never changed.
    Images {
        users: Vec<UserKey>,
        reply: Reply<Vec<(UserKey, UserImage)>>,
    },
    /// Replace what this node holds of the user with an image (a cluster node taking over a
    /// partition): the local records go as in an erasure, without closing the user's
    /// sockets; the image is stored under a new key.
    Restore {
        user: UserKey,
        image: Box<UserImage>,
        reply: Reply<()>,
    },
    /// Add experiment statistics (full keys), committed like a shard's own.
    Stats {
        deltas: Vec<(trimtab_store::StatKey, [f64; 6])>,
        reply: Reply<()>,
    },
}

/// Handles to the pipeline's threads and queues. Dropping the senders (via [`Pipeline::shutdown`])
/// lets every thread drain its queue, checkpoint and exit.
pub struct Pipeline {
    /// The writer's queue, for syncs (shards hold their own senders).
    writer: Mutex<Option<Sender<writer::WriterMsg>>>,
    shards: Mutex<Option<Vec<Sender<ShardMsg>>>>,
    depth: Vec<prometheus::IntGauge>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    shard_count: usize,
    /// Shards still replaying log tails after an unclean stop.
    recovering: Arc<AtomicUsize>,
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
    pub models: Arc<trimtab_learn::serving::Models>,
    /// The bandit learner's queue (None: decisions are logged but nothing learns online).
    pub learner: Option<Sender<crate::bandits::learner::LearnMsg>>,
    /// Where the threads report a fatal failure (storage error, panic).
    pub health: Arc<crate::health::Health>,
}

impl Pipeline {
    pub fn start(s: Services) -> std::io::Result<Pipeline> {
        let n = s.cfg.shard_count();
        let (wtx, wrx) = bounded(s.cfg.pipeline.writer_queue.max(1));
        // Per shard: the highest operation whose rows are in the indexed store.
        let indexed: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
        // After an unclean stop, the users whose log goes past their checkpoint, by shard.
        let mut recover: Vec<Vec<UserKey>> = vec![Vec::new(); n];
        if !s.store.was_clean() {
            let t = std::time::Instant::now();
            let users = s
                .store
                .users_with_tail()
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            tracing::info!(
                users = users.len(),
                ms = t.elapsed().as_millis() as u64,
                "unclean stop: replaying log tails past the checkpoints"
            );
            for u in users {
                recover[u.shard(n)].push(u);
            }
        }
        let recovering = Arc::new(AtomicUsize::new(
            recover.iter().filter(|r| !r.is_empty()).count(),
        ));
        let mut threads = Vec::new();
        let mut shard_txs = Vec::new();
        let mut fail_txs = Vec::new();
        let mut parts = Vec::new();
        let mut depth = Vec::new();
        for (idx, rec) in recover.into_iter().enumerate() {
            let (tx, rx) = bounded(s.cfg.pipeline.shard_queue.max(1));
            let (ftx, frx) = unbounded();
            shard_txs.push(tx);
            fail_txs.push(ftx);
            parts.push((idx, rx, frx, rec));
            depth.push(
                s.metrics
                    .queue_depth
                    .with_label_values(&[&format!("shard{idx}")]),
            );
        }
        s.store.set_retention(s.cfg.retention.max_age());
        let ix = indexer::start(
            &s.health,
            s.store.clone(),
            s.hub.clone(),
            s.metrics.clone(),
            indexed.clone(),
            std::time::Duration::from_millis(s.cfg.pipeline.index_ms),
            s.cfg
                .retention
                .max_age()
                .map(|_| std::time::Duration::from_millis(s.cfg.retention.check_ms)),
        )?;
        let w = writer::Writer::new(writer::WriterParts {
            rx: wrx,
            store: s.store.clone(),
            hub: s.hub.clone(),
            metrics: s.metrics.clone(),
            failed: fail_txs,
            max_batch: s.cfg.pipeline.max_commit_batch,
            indexer: ix,
            health: s.health.clone(),
        });
        threads.push(s.health.spawn("trimtab-writer", move || w.run())?);
        for (idx, rx, frx, rec) in parts {
            let sh = shard::Shard::new(shard::ShardParts {
                idx,
                rx,
                failed: frx,
                sink: Box::new(shard::ChannelSink(wtx.clone())),
                clock: Arc::new(shard::SystemClock),
                store: s.store.clone(),
                cfg: s.cfg.clone(),
                metrics: s.metrics.clone(),
                pseudo: s.pseudo.clone(),
                indexed: indexed.clone(),
                hub: s.hub.clone(),
                live: shard::Live {
                    rules: s.rules.clone(),
                    experiments: s.experiments.clone(),
                    segments: Some(s.segments.clone()),
                    bandits: s.bandits.clone(),
                    models: s.models.clone(),
                    learner: s.learner.clone(),
                },
                recover: rec,
                recovering: recovering.clone(),
            });
            threads.push(
                s.health
                    .spawn(&format!("trimtab-shard-{idx}"), move || sh.run())?,
            );
        }
        Ok(Pipeline {
            writer: Mutex::new(Some(wtx)),
            shards: Mutex::new(Some(shard_txs)),
            depth,
            threads: Mutex::new(threads),
            shard_count: n,
            recovering,
        })
    }

    /// Whether shards are still replaying log tails after an unclean stop (not ready yet).
    pub fn recovering(&self) -> bool {
        self.recovering.load(Ordering::Relaxed) > 0
    }

    fn send(&self, shard: usize, msg: ShardMsg) -> Result<(), SubmitError> {
        self.try_send(shard, msg).map_err(|(e, _)| e)
    }

    /// Queues `msg`, or gives it back with the reason.
    fn try_send(&self, shard: usize, msg: ShardMsg) -> Result<(), (SubmitError, ShardMsg)> {
        let guard = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        let Some(shards) = guard.as_ref() else {
            return Err((SubmitError::ShuttingDown, msg));
        };
        let tx = &shards[shard];
        let r = tx.try_send(msg);
        self.depth[shard].set(tx.len() as i64);
        match r {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(m)) => Err((SubmitError::Overloaded, m)),
            Err(TrySendError::Disconnected(m)) => Err((SubmitError::ShuttingDown, m)),
        }
    }

    /// Queues the events of several users (an HTTP batch), one message per shard; the
    /// receiver resolves once all of them are durable. On `Overloaded` some shards may have
    /// queued their part already (those events are stored; a retry finds them duplicates).
    pub fn submit_events(
        &self,
        users: Vec<(UserKey, Vec<Event>)>,
    ) -> Result<Pending<IngestOutcome>, SubmitError> {
        self.submit_events_with(users, true)
    }

    /// [`Pipeline::submit_events`]; with `push` false the adjustments the events cause are
    /// decided and stored but not pushed to pages.
    pub fn submit_events_with(
        &self,
        users: Vec<(UserKey, Vec<Event>)>,
        push: bool,
    ) -> Result<Pending<IngestOutcome>, SubmitError> {
        let (reply, rx) = oneshot::channel();
        let mut by_shard: Vec<Vec<(UserKey, Vec<Event>)>> = Vec::new();
        by_shard.resize_with(self.shard_count, Vec::new);
        for (u, evs) in users {
            by_shard[u.shard(self.shard_count)].push((u, evs));
        }
        let parts = by_shard.iter().filter(|v| !v.is_empty()).count();
        if parts == 0 {
            let _ = reply.send(Ok(IngestOutcome::default()));
            return Ok(rx);
        }
        let join = Join::new(parts, reply);
        for (shard, users) in by_shard.into_iter().enumerate() {
            if !users.is_empty() {
                let reply = EventsReply::Http(join.clone());
                self.send(shard, ShardMsg::Events { users, reply, push })?;
            }
        }
        Ok(rx)
    }

    /// Queues one socket's batch of one user's events. The `ack` (or an error frame naming
    /// the ids) is sent into `socket` once the batch is durable; `extra` ids are acknowledged
    /// with it (events accepted without being stored). On error the events come back.
    pub fn submit_ws(
        &self,
        user: UserKey,
        events: Vec<Event>,
        socket: SocketTx,
        extra: Vec<String>,
    ) -> Result<(), (SubmitError, Vec<Event>)> {
        let shard = user.shard(self.shard_count);
        let reply = EventsReply::Ws { socket, extra };
        let msg = ShardMsg::Events {
            users: vec![(user, events)],
            reply,
            push: true,
        };
        self.try_send(shard, msg).map_err(|(e, m)| match m {
            ShardMsg::Events { mut users, .. } => {
                (e, users.pop().map(|(_, v)| v).unwrap_or_default())
            }
            _ => (e, Vec::new()),
        })
    }

    pub fn decide(
        &self,
        user: UserKey,
        slot: String,
        candidates: Vec<String>,
    ) -> Result<Pending<Decision>, SubmitError> {
        let (reply, rx) = oneshot::channel();
        let shard = user.shard(self.shard_count);
        self.send(
            shard,
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
        self.send(
            user.shard(self.shard_count),
            ShardMsg::Export { user, reply },
        )?;
        Ok(rx)
    }

    /// Images of `users` for a cluster checkpoint, read once everything queued before is
    /// indexed; unknown users have none. One request per shard (a shard that refuses, full,
    /// makes the whole call `Overloaded`: retry it).
    pub async fn images(
        &self,
        users: &[UserKey],
    ) -> Result<Result<Vec<(UserKey, UserImage)>, PipelineError>, SubmitError> {
        let mut by_shard: Vec<Vec<UserKey>> = vec![Vec::new(); self.shard_count];
        for u in users {
            by_shard[u.shard(self.shard_count)].push(*u);
        }
        let mut pending = Vec::new();
        for (shard, users) in by_shard.into_iter().enumerate() {
            if users.is_empty() {
                continue;
            }
            let (reply, rx) = oneshot::channel();
            self.send(shard, ShardMsg::Images { users, reply })?;
            pending.push(rx);
        }
        let mut out = Vec::with_capacity(users.len());
        for rx in pending {
            match rx.await.map_err(|_| SubmitError::ShuttingDown)? {
                Ok(v) => out.extend(v),
                Err(e) => return Ok(Err(e)),
            }
        }
        Ok(Ok(out))
    }

    /// Replaces what this node holds of the user with `image` (see [`UserImage`]); resolves
    /// once that is durable.
    pub fn restore(&self, user: UserKey, image: UserImage) -> Result<Pending<()>, SubmitError> {
        let (reply, rx) = oneshot::channel();
        self.send(
            user.shard(self.shard_count),
            ShardMsg::Restore {
                user,
                image: Box::new(image),
                reply,
            },
        )?;
        Ok(rx)
    }

    /// Adds `deltas` to the stored experiment statistics; resolves once that is durable.
    pub fn add_stats(
        &self,
        deltas: Vec<(trimtab_store::StatKey, [f64; 6])>,
    ) -> Result<Pending<()>, SubmitError> {
        let (reply, rx) = oneshot::channel();
        self.send(0, ShardMsg::Stats { deltas, reply })?;
        Ok(rx)
    }

    /// A copy of the user's current state as its shard has it (None: unknown user). Reads
    /// only: nothing is written or pushed.
    pub fn peek(
        &self,
        user: UserKey,
    ) -> Result<Pending<Option<Box<crate::features::UserState>>>, SubmitError> {
        let (reply, rx) = oneshot::channel();
        self.send(user.shard(self.shard_count), ShardMsg::Peek { user, reply })?;
        Ok(rx)
    }

    pub fn erase(&self, user: UserKey) -> Result<Pending<EraseCounts>, SubmitError> {
        let (reply, rx) = oneshot::channel();
        self.send(
            user.shard(self.shard_count),
            ShardMsg::Erase { user, reply },
        )?;
        Ok(rx)
    }

    /// Checkpoints every dirty user of every shard and waits (up to `timeout`) until that is
    /// durable, so that readers of the checkpoints (the segmenter) see current states.
    /// Blocking: for background threads. Returns whether every shard confirmed in time.
    pub fn checkpoint_all(&self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let (done, confirmed) = bounded(self.shard_count);
        let senders = match self
            .shards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            Some(s) => s.clone(),
            None => return false,
        };
        for tx in &senders {
            let msg = ShardMsg::Checkpoint { done: done.clone() };
            if tx.send_deadline(msg, deadline).is_err() {
                return false;
            }
        }
        (0..senders.len()).all(|_| confirmed.recv_deadline(deadline).is_ok())
    }

    /// Resolves once everything acknowledged so far is in the indexed store, for readers of it
    /// (experiment results, the bandit log) that must see every acknowledged event.
    pub async fn sync(&self) -> Result<(), SubmitError> {
        let (tx, rx) = oneshot::channel();
        let w = self
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(SubmitError::ShuttingDown)?;
        w.try_send(writer::WriterMsg::Barrier(indexer::Barrier::Notify(
            writer::Waiter::Async(tx),
        )))
        .map_err(|e| match e {
            TrySendError::Full(_) => SubmitError::Overloaded,
            TrySendError::Disconnected(_) => SubmitError::ShuttingDown,
        })?;
        rx.await.map_err(|_| SubmitError::ShuttingDown)
    }

    /// Stops accepting, lets shards drain their queues and checkpoint every dirty user, lets
    /// the writer commit everything, and joins their threads. Blocking: call from a non-async
    /// thread or `spawn_blocking`.
    pub fn shutdown(&self) {
        self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.shards.lock().unwrap_or_else(|e| e.into_inner()).take();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests;
