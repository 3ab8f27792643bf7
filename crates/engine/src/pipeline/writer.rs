//! The writer thread: the only writer of the write-ahead log. It drains its queue, logs the
//! work of many shard drains as one batch (group commit: one record appended to the log's
//! segment file and one `fdatasync`, after the new users' keys), then runs what waited for durability — HTTP replies,
//! `ack` frames into their sockets' queues, adjustment pushes — in order, and hands the batch
//! to the indexer ([`super::indexer`]), which applies it to the indexed store. Export, erasure
//! and syncs are barriers: what is queued before them is logged first, and the indexer runs
//! them once it has applied everything before.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytestring::ByteString;
use crossbeam_channel::{Receiver, Sender};

use super::indexer::{Barrier, Item};
use super::{Decision, IngestOutcome, Join, PipelineError, Reply};
use crate::delivery::{Hub, Outbound, SocketTx};
use crate::health::{FatalKind, Health};
use crate::metrics::Metrics;
use trimtab_privacy::UserKey;
use trimtab_store::{Batch, StatKey, Store, UserRows};

/// What runs after a commit, in order.
pub(crate) enum After {
    /// An adjustment for every socket of `user` (the frame is serialised once).
    Push {
        user: UserKey,
        frame: ByteString,
        decision: Box<Decision>,
    },
    /// A part of an HTTP batch.
    Http {
        join: Arc<Join>,
        outcome: IngestOutcome,
    },
    /// A WebSocket batch: `ack` on success; on failure an error frame naming `ids`.
    Ws {
        socket: SocketTx,
        ack: ByteString,
        ids: Vec<String>,
    },
    /// A first-paint decision that had to be stored before it is answered.
    Decided {
        reply: Reply<Decision>,
        decision: Box<Decision>,
    },
    /// Someone waits for everything before this to be settled (committed or failed).
    Notify(Sender<()>),
    /// Someone waits for this Work to be committed.
    Done(Reply<()>),
}

/// One shard drain's output: rows to commit and what waits for them.
#[derive(Default)]
pub(crate) struct Work {
    pub shard: usize,
    /// The shard's operation counter at the end of this drain.
    pub op: u64,
    pub rows: Vec<UserRows>,
    pub stats: Vec<(StatKey, [f64; 6])>,
    pub after: Vec<After>,
    /// New events in `rows` (for metrics).
    pub events: u64,
}

impl Work {
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.stats.is_empty() && self.after.is_empty()
    }
}

/// A failed commit: the shard drops these users' in-memory state (it ran ahead of the disk)
/// and reloads them once its operations up to `op` are settled.
pub(crate) struct Failed {
    pub op: u64,
    pub users: Vec<UserKey>,
}

/// Someone waiting for everything queued before to be applied to the indexed store.
pub(crate) enum Waiter {
    Blocking(Sender<()>),
    Async(tokio::sync::oneshot::Sender<()>),
}

impl Waiter {
    pub(crate) fn done(self) {
        match self {
            Waiter::Blocking(tx) => {
                let _ = tx.send(());
            }
            Waiter::Async(tx) => {
                let _ = tx.send(());
            }
        }
    }
}

pub(crate) enum WriterMsg {
    Commit(Box<Work>),
    /// Run on the indexer after everything queued before it is logged and applied.
    Barrier(Barrier),
}

pub(crate) struct Writer {
    rx: Receiver<WriterMsg>,
    store: Arc<Store>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    failed: Vec<Sender<Failed>>,
    max_batch: usize,
    failures: u64,
    indexer: super::indexer::Handle,
    labels: crate::metrics::VariantLabels,
    health: Arc<Health>,
}

/// What the writer is built from.
pub(crate) struct WriterParts {
    pub rx: Receiver<WriterMsg>,
    pub store: Arc<Store>,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    /// Per shard: where failed commits are reported.
    pub failed: Vec<Sender<Failed>>,
    /// Most shard drains per group commit.
    pub max_batch: usize,
    pub indexer: super::indexer::Handle,
    pub health: Arc<Health>,
}

impl Writer {
    pub(crate) fn new(p: WriterParts) -> Writer {
        Writer {
            rx: p.rx,
            store: p.store,
            hub: p.hub,
            metrics: p.metrics,
            failed: p.failed,
            max_batch: p.max_batch.max(1),
            failures: 0,
            indexer: p.indexer,
            labels: Default::default(),
            health: p.health,
        }
    }

    pub(crate) fn run(mut self) {
        let depth = self.metrics.queue_depth.with_label_values(&["writer"]);
        let mut group: Vec<Work> = Vec::new();
        // Ends when every shard has dropped its sender and the queue is empty.
        while let Ok(first) = self.rx.recv() {
            let mut batch = vec![first];
            while batch.len() < self.max_batch {
                match self.rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            depth.set(self.rx.len() as i64);
            for msg in batch {
                match msg {
                    WriterMsg::Commit(w) => group.push(*w),
                    // Barriers: what is queued before them is logged first; the indexer runs
                    // them once it has applied everything before.
                    WriterMsg::Barrier(b) => {
                        self.commit(&mut group);
                        self.indexer.send(Item::Barrier(b));
                    }
                }
            }
            self.commit(&mut group);
        }
        // Every shard checkpointed its dirty users before dropping its sender: apply what is
        // left, empty the log and record the clean stop.
        let indexer_ok = self.indexer.finish();
        if self.failures == 0 && indexer_ok {
            let r = self
                .store
                .applied_wal()
                .and_then(|a| self.store.trim_log(a))
                .and_then(|()| self.store.mark_clean());
            if let Err(e) = r {
                tracing::warn!(error = %e, "cannot record the clean shutdown");
            }
        }
        tracing::debug!("writer drained and stopped");
    }

    /// Logs the group's rows as one batch (the group commit), then acknowledges.
    fn commit(&mut self, group: &mut Vec<Work>) {
        if group.is_empty() {
            return;
        }
        let mut batch = Batch::default();
        let mut marks = Vec::with_capacity(group.len());
        let mut events = 0;
        batch
            .rows
            .reserve_exact(group.iter().map(|w| w.rows.len()).sum());
        for w in group.iter_mut() {
            batch.rows.append(&mut w.rows);
            batch.stats.append(&mut w.stats);
            marks.push((w.shard, w.op));
            events += w.events;
        }
        if batch.is_empty() {
            // Only acks of duplicates: they follow the commits before them.
            self.indexer.send(Item::Settled(marks));
            for w in group.drain(..) {
                for a in w.after {
                    self.after_ok(a);
                }
            }
            return;
        }
        self.metrics.commit_batch.observe(group.len() as f64);
        // After a fatal failure nothing touches the disk again (an fsync that failed is not
        // retried as if it had succeeded): everything is refused until the restart.
        let result = match self.health.fatal() {
            Some(f) => Err(trimtab_store::StoreError::Db(format!(
                "the store failed earlier ({}); the server is restarting",
                f.what
            ))),
            None => self.log(&batch),
        };
        match result {
            Ok(seq) => {
                self.metrics.events_accepted.inc_by(events);
                self.indexer.send(Item::Batch {
                    seq,
                    batch: Box::new(batch),
                    marks,
                });
                for w in group.drain(..) {
                    for a in w.after {
                        self.after_ok(a);
                    }
                }
            }
            Err(e) => {
                self.failures += 1;
                let msg = e.to_string();
                self.metrics.reject("storage", events);
                let mut users: HashMap<usize, Vec<UserKey>> = HashMap::new();
                for w in group.iter() {
                    users.entry(w.shard).or_default();
                }
                for r in &batch.rows {
                    // Which shard wrote it: users are partitioned, so any work of that shard.
                    let shard = r.user.shard(self.failed.len());
                    users.entry(shard).or_default().push(r.user);
                }
                for (shard, op) in &marks {
                    let users = users.remove(shard).unwrap_or_default();
                    let _ = self.failed[*shard].send(Failed { op: *op, users });
                }
                // The operations are settled (failed): the shards may reload those users.
                self.indexer.send(Item::Settled(marks));
                for w in group.drain(..) {
                    for a in w.after {
                        after_err(a, &msg);
                    }
                }
            }
        }
    }

    /// One group commit (log append and fdatasync); a failure is fatal.
    fn log(&self, batch: &Batch) -> Result<u64, trimtab_store::StoreError> {
        // Fault injection (`failpoints` builds only): the writer panics here.
        fail::fail_point!("writer-commit");
        let start = Instant::now();
        let result = self.store.log(batch, self.indexer.applied());
        self.metrics
            .commit_latency
            .observe(start.elapsed().as_secs_f64());
        if let Err(e) = &result {
            self.health
                .fail(FatalKind::Storage, "group commit", e.to_string());
        }
        result
    }

    fn after_ok(&mut self, a: After) {
        match a {
            After::Push {
                user,
                frame,
                decision: d,
            } => {
                let variant = self.labels.variant(&d.slot, &d.variant);
                self.metrics
                    .adjustments_decided
                    .with_label_values(&[&d.slot, variant])
                    .inc();
                let sent = self.hub.push(&user, &frame);
                self.hub.publish(|| {
                    serde_json::json!({"type": "adjust", "ts": d.ts, "user": user.hex(),
                        "slot": d.slot, "variant": d.variant, "rule": d.rule, "sockets": sent})
                    .to_string()
                });
                if sent > 0 {
                    self.metrics
                        .adjustments_pushed
                        .with_label_values(&[&d.slot, variant])
                        .inc();
                }
            }
            After::Http { join, outcome } => join.part(Ok(outcome)),
            After::Ws { socket, ack, .. } => {
                self.hub.send_to(&socket, ack);
            }
            After::Decided { reply, decision } => {
                let _ = reply.send(Ok(*decision));
            }
            After::Done(reply) => {
                let _ = reply.send(Ok(()));
            }
            // Waits for the indexed store, not only the log.
            After::Notify(tx) => self
                .indexer
                .send(Item::Barrier(Barrier::Notify(Waiter::Blocking(tx)))),
        }
    }
}

fn after_err(a: After, msg: &str) {
    match a {
        After::Push { .. } => {} // never pushed: the decision is not stored
        After::Http { join, .. } => join.part(Err(PipelineError::Storage(msg.to_string()))),
        After::Ws { socket, ids, .. } => {
            let frame = crate::delivery::frames::error(
                trimtab_wire::Code::StorageUnavailable,
                "storing these events failed; retry them with the same ids",
                None,
                &ids,
            );
            // The client retries what was not acknowledged.
            let _ = socket.try_send(Outbound::Text(frame));
        }
        After::Decided { reply, .. } => {
            let _ = reply.send(Err(PipelineError::Storage(msg.to_string())));
        }
        After::Notify(tx) => {
            let _ = tx.send(());
        }
        After::Done(reply) => {
            let _ = reply.send(Err(PipelineError::Storage(msg.to_string())));
        }
    }
}
