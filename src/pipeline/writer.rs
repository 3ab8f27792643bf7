//! The writer thread: the only redb writer. It drains its queue, commits the work of many
//! shard drains in one durable transaction (group commit: every row, every new user's key and
//! the summed statistic deltas), then runs what waited for durability — HTTP replies, `ack`
//! frames into their sockets' queues, adjustment pushes — in order. Export and erasure are
//! barriers: everything queued before them is committed first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytestring::ByteString;
use crossbeam_channel::{Receiver, Sender};

use super::{Decision, IngestOutcome, Join, PipelineError, Reply, UserExport};
use crate::delivery::{Hub, Outbound, SocketTx};
use crate::event::Event;
use crate::metrics::Metrics;
use crate::privacy::UserKey;
use crate::store::{EraseCounts, StatKey, Store, UserRows};

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

pub(crate) enum WriterMsg {
    Commit(Box<Work>),
    Export {
        user: UserKey,
        /// The user's current state as the owning shard has it (None: not known).
        state: Option<serde_json::Value>,
        reply: Reply<Option<UserExport>>,
    },
    Erase {
        user: UserKey,
        /// The user's detached key slot (to overwrite in place), if the user had a key.
        slot: Option<u64>,
        reply: Reply<EraseCounts>,
    },
}

pub(crate) struct Writer {
    rx: Receiver<WriterMsg>,
    store: Arc<Store>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    committed: Arc<Vec<AtomicU64>>,
    failed: Vec<Sender<Failed>>,
    max_batch: usize,
    failures: u64,
}

impl Writer {
    pub(crate) fn new(
        rx: Receiver<WriterMsg>,
        store: Arc<Store>,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        committed: Arc<Vec<AtomicU64>>,
        failed: Vec<Sender<Failed>>,
        max_batch: usize,
    ) -> Writer {
        Writer {
            rx,
            store,
            hub,
            metrics,
            committed,
            failed,
            max_batch: max_batch.max(1),
            failures: 0,
        }
    }

    pub(crate) fn run(mut self) {
        let depth = self.metrics.queue_depth.with_label_values(&["writer"]);
        let mut group: Vec<Box<Work>> = Vec::new();
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
                    WriterMsg::Commit(w) => group.push(w),
                    WriterMsg::Export { user, state, reply } => {
                        self.commit(&mut group);
                        let _ = reply.send(self.export(&user, state));
                    }
                    WriterMsg::Erase { user, slot, reply } => {
                        self.commit(&mut group);
                        let r = self
                            .store
                            .erase(&user, slot)
                            .map_err(|e| PipelineError::Storage(e.to_string()));
                        if r.is_ok() {
                            self.hub.close_user(&user, "user data erased");
                            tracing::info!(user = %user.short(), "user erased");
                        }
                        let _ = reply.send(r);
                    }
                }
            }
            self.commit(&mut group);
        }
        // Every shard checkpointed its dirty users before dropping its sender.
        if self.failures == 0 {
            if let Err(e) = self.store.mark_clean() {
                tracing::warn!(error = %e, "cannot record the clean shutdown");
            }
        }
        tracing::debug!("writer drained and stopped");
    }

    fn commit(&mut self, group: &mut Vec<Box<Work>>) {
        if group.is_empty() {
            return;
        }
        let start = Instant::now();
        let result = if group
            .iter()
            .all(|w| w.rows.is_empty() && w.stats.is_empty())
        {
            Ok(()) // only acks of duplicates: they follow the commits before them
        } else {
            // Each statistic is read and written once per commit, however many deltas.
            let mut stats: HashMap<&StatKey, [f64; 6]> = HashMap::new();
            for w in group.iter() {
                for (k, d) in &w.stats {
                    let s = stats.entry(k).or_insert([0.0; 6]);
                    for (a, b) in s.iter_mut().zip(d) {
                        *a += b;
                    }
                }
            }
            let stats: Vec<(StatKey, [f64; 6])> =
                stats.into_iter().map(|(k, v)| (k.clone(), v)).collect();
            let r = self
                .store
                .commit(group.iter().flat_map(|w| w.rows.iter()), &stats);
            self.metrics
                .commit_latency
                .observe(start.elapsed().as_secs_f64());
            self.metrics.commit_batch.observe(group.len() as f64);
            r
        };
        match result {
            Ok(()) => {
                for w in group.drain(..) {
                    self.committed[w.shard].fetch_max(w.op, Ordering::Release);
                    self.metrics.events_accepted.inc_by(w.events);
                    for a in w.after {
                        self.after_ok(a);
                    }
                }
            }
            Err(e) => {
                self.failures += 1;
                let msg = e.to_string();
                tracing::error!(error = %msg, batches = group.len(), "group commit failed; nothing of it acknowledged");
                for w in group.drain(..) {
                    self.metrics.reject("storage", w.events);
                    let users = w.rows.iter().map(|r| r.user).collect();
                    let _ = self.failed[w.shard].send(Failed { op: w.op, users });
                    // The operations are settled (failed): the shard may reload these users.
                    self.committed[w.shard].fetch_max(w.op, Ordering::Release);
                    for a in w.after {
                        after_err(a, &msg);
                    }
                }
            }
        }
    }

    fn after_ok(&self, a: After) {
        match a {
            After::Push {
                user,
                frame,
                decision: d,
            } => {
                self.metrics
                    .adjustments_decided
                    .with_label_values(&[&d.slot, &d.variant])
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
                        .with_label_values(&[&d.slot, &d.variant])
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
            After::Notify(tx) => {
                let _ = tx.send(());
            }
        }
    }

    fn export(
        &self,
        user: &UserKey,
        state: Option<serde_json::Value>,
    ) -> Result<Option<UserExport>, PipelineError> {
        let rec = self
            .store
            .export(user)
            .map_err(|e| PipelineError::Storage(e.to_string()))?;
        if rec.is_none() && state.is_none() {
            return Ok(None);
        }
        let r = rec.unwrap_or_default();
        let events = r
            .events
            .iter()
            .filter_map(|(seq, b)| {
                let ev: Event = postcard::from_bytes(b).ok()?;
                let mut v = ev.to_json();
                v["seq"] = (*seq).into();
                Some(v)
            })
            .collect();
        let decisions = r
            .decisions
            .iter()
            .filter_map(|(_, b)| Decision::decode(b))
            .collect();
        let learning = r
            .learn
            .iter()
            .filter_map(|(_, b)| crate::bandits::record::LearnRecord::decode(b))
            .map(|l| l.to_json())
            .collect();
        Ok(Some(UserExport {
            state: state.unwrap_or_default(),
            events,
            decisions,
            learning,
        }))
    }
}

fn after_err(a: After, msg: &str) {
    match a {
        After::Push { .. } => {} // never pushed: the decision is not stored
        After::Http { join, .. } => join.part(Err(PipelineError::Storage(msg.to_string()))),
        After::Ws { socket, ids, .. } => {
            let frame = crate::delivery::frames::error(
                "storage_unavailable",
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
    }
}
