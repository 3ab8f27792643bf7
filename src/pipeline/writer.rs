//! The writer thread: the only redb writer. It drains its queue, commits consecutive batches in
//! one durable transaction (group commit), then acknowledges each and pushes its adjustments to
//! the user's sockets. Export and erasure requests are barriers: everything queued before them
//! is committed first, so they see (or erase) every acknowledged event.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use super::{Decision, PipelineError, Reply, UserExport};
use crate::delivery::Hub;
use crate::event::Event;
use crate::features::UserState;
use crate::metrics::Metrics;
use crate::privacy::UserKey;
use crate::store::{EraseCounts, Mutation, Store};

/// Called once the batch's fate is known (`Ok` = durable).
pub(crate) type Done = Box<dyn FnOnce(Result<(), PipelineError>) + Send>;

pub(crate) enum WriterMsg {
    Commit {
        shard: usize,
        op: u64,
        mutation: Mutation,
        /// Decisions to push to the user's sockets after the commit.
        pushes: Vec<Decision>,
        done: Option<Done>,
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

pub(crate) struct Writer {
    rx: Receiver<WriterMsg>,
    store: Arc<Store>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    committed: Arc<Vec<AtomicU64>>,
    failed: Vec<Sender<UserKey>>,
    max_batch: usize,
}

impl Writer {
    pub(crate) fn new(
        rx: Receiver<WriterMsg>,
        store: Arc<Store>,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        committed: Arc<Vec<AtomicU64>>,
        failed: Vec<Sender<UserKey>>,
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
        }
    }

    pub(crate) fn run(self) {
        let mut group: Vec<WriterMsg> = Vec::new();
        // Ends when every shard has dropped its sender and the queue is empty.
        while let Ok(first) = self.rx.recv() {
            let mut batch = vec![first];
            while batch.len() < self.max_batch {
                match self.rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            self.metrics
                .queue_depth
                .with_label_values(&["writer"])
                .set(self.rx.len() as i64);
            for msg in batch {
                match msg {
                    WriterMsg::Commit { .. } => group.push(msg),
                    WriterMsg::Export { user, reply } => {
                        self.commit(&mut group);
                        let _ = reply.send(self.export(&user));
                    }
                    WriterMsg::Erase { user, reply } => {
                        self.commit(&mut group);
                        let r = self
                            .store
                            .erase(&user)
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
        tracing::debug!("writer drained and stopped");
    }

    fn commit(&self, group: &mut Vec<WriterMsg>) {
        if group.is_empty() {
            return;
        }
        let mut muts = Vec::with_capacity(group.len());
        let mut rest = Vec::with_capacity(group.len());
        for msg in group.drain(..) {
            if let WriterMsg::Commit {
                shard,
                op,
                mutation,
                pushes,
                done,
            } = msg
            {
                let user = mutation.user;
                let events = mutation.events.len() as u64;
                muts.push(mutation);
                rest.push((shard, op, user, events, pushes, done));
            }
        }
        let start = Instant::now();
        let result = self.store.apply(&muts);
        self.metrics
            .commit_latency
            .observe(start.elapsed().as_secs_f64());
        self.metrics.commit_batch.observe(muts.len() as f64);
        match result {
            Ok(()) => {
                for (shard, op, user, events, pushes, done) in rest {
                    self.committed[shard].fetch_max(op, Ordering::Release);
                    self.metrics.events_accepted.inc_by(events);
                    if let Some(done) = done {
                        done(Ok(()));
                    }
                    if let Some(user) = user {
                        for d in pushes {
                            self.metrics
                                .adjustments_decided
                                .with_label_values(&[&d.slot, &d.variant])
                                .inc();
                            let sent = self.hub.push(&user, d.adjust_message().into());
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
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, batches = rest.len(), "group commit failed; batches not acknowledged");
                for (shard, _, user, events, _, done) in rest {
                    self.metrics.reject("storage", events);
                    if let Some(user) = user {
                        // The shard's in-memory state ran ahead of the disk: make it reload.
                        let _ = self.failed[shard].send(user);
                    }
                    if let Some(done) = done {
                        done(Err(PipelineError::Storage(e.to_string())));
                    }
                }
            }
        }
    }

    fn export(&self, user: &UserKey) -> Result<Option<UserExport>, PipelineError> {
        let rec = self
            .store
            .export(user)
            .map_err(|e| PipelineError::Storage(e.to_string()))?;
        Ok(rec.map(|r| {
            let now = super::shard::now_ms();
            let state = r
                .state
                .and_then(|b| UserState::decode(&b))
                .map(|s| crate::features::view::state_json(user, &s, now))
                .unwrap_or_default();
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
            UserExport {
                state,
                events,
                decisions,
                learning,
            }
        }))
    }
}
