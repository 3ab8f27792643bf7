//! The indexer thread: the only writer of the indexed store (`trimtab.redb`). The writer hands
//! it every logged batch in log order; it applies whatever has accumulated in one transaction
//! (under load, many batches at once, so each B-tree page is written once for all of them),
//! then publishes how far each shard's operations are applied: until then a shard keeps their
//! event ids in memory for deduplication and does not evict their users. Export, erasure and
//! syncs run here, after everything queued before them is applied. A failed apply is fatal
//! ([`crate::health`]): redb refuses every later transaction after an I/O error, so nothing is
//! retried; the batches are safe in the log, which the next start applies again.
//!
//! Batching: a transaction at most every `pipeline.index_ms` (unless a barrier waits), so the
//! events of one visit share their pages; every transaction is durable (see [`Indexer::flush`]
//! for why); the thread runs at a lower CPU priority than the shards and the writer, which are
//! on the acknowledgement's path.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender};

use super::priority::Priority;
use super::writer::Waiter;
use super::{Decision, PipelineError, Reply, UserExport, UserImage};
use crate::delivery::Hub;
use crate::health::{FatalKind, Health};
use crate::metrics::Metrics;
use trimtab_privacy::UserKey;
use trimtab_store::{Batch, EraseCounts, Store};
use trimtab_wire::Event;

/// Bytes of logged batches waiting to be applied above which the writer waits (backpressure).
/// Below it the writer never waits for the indexer, even while a large transaction runs.
pub(super) const QUEUE_BYTES: usize = 64 << 20;
/// How often the indexer looks for more while it gathers an index transaction's batches (also
/// the most a barrier — an export, an erasure — waits to be seen).
const GATHER_POLL: Duration = Duration::from_millis(5);
/// Rows of `seen_runs` one retention step looks at (a few ms of the indexer's time).
const PURGE_STEP: usize = 20_000;
/// Between two steps of one retention run: queued batches are applied first.
const PURGE_PAUSE: Duration = Duration::from_millis(20);
/// The first retention run after start, at the latest.
const PURGE_FIRST: Duration = Duration::from_secs(60);

pub(crate) enum Item {
    /// A logged batch and the (shard, op) marks of the work in it.
    Batch {
        seq: u64,
        batch: Box<Batch>,
        marks: Vec<(usize, u64)>,
    },
    /// Operations settled without anything to apply (duplicates only, or a failed commit).
    Settled(Vec<(usize, u64)>),
    Barrier(Barrier),
}

/// Work that runs on the indexer once everything logged before it is applied; shards send it
/// through the writer, which logs what is queued before it first.
pub(crate) enum Barrier {
    Export {
        user: UserKey,
        /// The user's current state as the owning shard has it (None: not known).
        state: Option<serde_json::Value>,
        reply: Reply<Option<UserExport>>,
    },
    Erase {
        /// Its keys were detached when its shard accepted the erasure (those go, with their
        /// rows; a key made since seals later records and stays).
        user: UserKey,
        /// The user's events, as its state counts them (the event store is not rewritten).
        events: u64,
        /// Close the user's sockets (an erasure; not when a cluster checkpoint replaces the
        /// user's records).
        close: bool,
        reply: Reply<EraseCounts>,
    },
    /// A cluster checkpoint's images of users, with each one's encoded state from its shard.
    Images {
        users: Vec<(UserKey, Vec<u8>)>,
        reply: Reply<Vec<(UserKey, UserImage)>>,
    },
    /// Tell `Waiter` once everything before is in the indexed store (read-your-writes for
    /// readers of the indexed store).
    Notify(Waiter),
}

/// The writer's side of the indexer.
pub(crate) struct Handle {
    tx: Option<Sender<Item>>,
    /// Bytes of batches queued and not yet applied.
    queued: Arc<AtomicUsize>,
    applied: Arc<AtomicU64>,
    ok: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    prio: Arc<Priority>,
}

impl Handle {
    /// Queues an item; waits only while more than [`QUEUE_BYTES`] wait to be applied.
    pub(crate) fn send(&self, item: Item) {
        if let Item::Batch { batch, .. } = &item {
            let n = batch.bytes();
            while self.queued.load(Ordering::Acquire) > QUEUE_BYTES {
                std::thread::sleep(Duration::from_millis(1));
            }
            let queued = self.queued.fetch_add(n, Ordering::AcqRel) + n;
            self.prio.on_queued(queued);
        }
        if let Some(tx) = &self.tx {
            let _ = tx.send(item);
        }
    }

    /// The last log seq durably applied (the writer trims the log up to it).
    pub(crate) fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Lets the indexer apply what is queued and stop; returns whether everything was applied.
    pub(crate) fn finish(&mut self) -> bool {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.ok.load(Ordering::Acquire)
    }
}

struct Indexer {
    rx: Receiver<Item>,
    queued: Arc<AtomicUsize>,
    interval: Duration,
    store: Arc<Store>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    /// Per shard: the highest operation whose rows are in the indexed store.
    indexed: Arc<Vec<AtomicU64>>,
    applied: Arc<AtomicU64>,
    ok: Arc<AtomicBool>,
    pending: Vec<(u64, Box<Batch>)>,
    /// Bytes of `pending`.
    pending_bytes: usize,
    marks: Vec<(usize, u64)>,
    health: Arc<Health>,
    /// How often retention runs (None: off), and when it runs next.
    purge_every: Option<Duration>,
    purge_due: Instant,
    prio: Arc<Priority>,
}

pub(crate) fn start(
    health: &Arc<Health>,
    store: Arc<Store>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    indexed: Arc<Vec<AtomicU64>>,
    interval: Duration,
    purge_every: Option<Duration>,
) -> std::io::Result<Handle> {
    let (tx, rx) = unbounded();
    let queued = Arc::new(AtomicUsize::new(0));
    let applied = Arc::new(AtomicU64::new(store.applied_wal().unwrap_or(0)));
    let ok = Arc::new(AtomicBool::new(true));
    let prio = Arc::new(Priority::probe());
    let ix = Indexer {
        rx,
        queued: queued.clone(),
        interval,
        store,
        hub,
        metrics,
        indexed,
        applied: applied.clone(),
        ok: ok.clone(),
        pending: Vec::new(),
        pending_bytes: 0,
        marks: Vec::new(),
        health: health.clone(),
        purge_every,
        // The first run soon after start (a server that restarts often still purges).
        purge_due: Instant::now() + purge_every.map_or(Duration::ZERO, |e| e.min(PURGE_FIRST)),
        prio: prio.clone(),
    };
    let thread = health.spawn("trimtab-indexer", move || {
        // The indexer yields the CPU to the threads on the acknowledgement's path.
        ix.prio.start_indexer();
        ix.run()
    })?;
    Ok(Handle {
        tx: Some(tx),
        queued,
        applied,
        ok,
        thread: Some(thread),
        prio,
    })
}

impl Indexer {
    fn run(mut self) {
        let mut last = Instant::now() - self.interval;
        loop {
            let first = match self.purge_every {
                None => self.rx.recv().ok(),
                Some(_) => match self.rx.recv_deadline(self.purge_due) {
                    Ok(item) => Some(item),
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                        self.purge();
                        continue;
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => None,
                },
            };
            let Some(first) = first else {
                break;
            };
            self.take(first);
            // Gather what arrives until the interval is over (a barrier flushes at once).
            // Half the queue bound waiting also applies at once: the writer must never wait
            // for a deadline while the indexer waits for more.
            self.gather(last + self.interval);
            if !self.pending.is_empty() {
                last = Instant::now();
            }
            self.flush();
            self.prio.after_flush(self.queued.load(Ordering::Acquire));
            if self.purge_every.is_some() && Instant::now() >= self.purge_due {
                self.purge();
            }
        }
        // Shutdown: the writer is done; apply what is left (on failure the log keeps it for the
        // next start).
        self.flush();
        tracing::debug!("indexer drained and stopped");
    }

    /// Takes what arrives until `due`, a barrier (run at once) or half the queue bound, or
    /// until the writer is gone. It looks every [`GATHER_POLL`] rather than sleeping in
    /// `recv`: a blocked receiver is woken by every send, and the writer sends once per
    /// group commit — a context switch per commit for nothing (29 000 a 12 s run at 10 000
    /// events/s, as many as the shards').
    fn gather(&mut self, due: Instant) {
        loop {
            loop {
                match self.rx.try_recv() {
                    Ok(item) => {
                        if self.take(item) || self.pending_bytes >= QUEUE_BYTES / 2 {
                            return;
                        }
                    }
                    Err(crossbeam_channel::TryRecvError::Empty) => break,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => return,
                }
            }
            let now = Instant::now();
            if now >= due {
                return;
            }
            std::thread::sleep((due - now).min(GATHER_POLL));
        }
    }

    /// Takes one item; returns whether it was a barrier (run at once, after a flush).
    fn take(&mut self, item: Item) -> bool {
        match item {
            Item::Batch { seq, batch, marks } => {
                self.pending_bytes += batch.bytes();
                self.pending.push((seq, batch));
                self.marks.extend(marks);
                false
            }
            Item::Settled(marks) => {
                self.marks.extend(marks);
                false
            }
            Item::Barrier(b) => {
                self.flush();
                self.barrier(b);
                true
            }
        }
    }

    /// Applies every pending batch in one durable transaction (retrying on failure), then
    /// publishes the marks; the writer trims the log up to what is applied.
    ///
    /// Every transaction is fsynced, one per `index_ms`. redb keeps a non-durable
    /// transaction's pages in its own write buffer, so the earlier scheme (an fsync every 5 s)
    /// wrote five seconds of B-tree pages at once — 0.5–1 s of I/O during which the log's
    /// small `fdatasync` queued behind it on the disk (group commits of 170–355 ms). A second's
    /// worth each time keeps that wait to tens of ms (paired WebSocket runs at 1 000 sessions:
    /// ack p99 327–353 ms before, 136–244 ms after). Shorter intervals cost more CPU (each
    /// transaction copies every leaf it touches) than they save.
    fn flush(&mut self) {
        if self.health.is_failed() {
            // Nothing more is applied (the log keeps it for the next start); nothing is
            // published as indexed.
            self.discard();
            return;
        }
        if !self.pending.is_empty() {
            let t = Instant::now();
            match self.store.apply(&self.pending) {
                Ok(()) => {
                    self.metrics
                        .index_latency
                        .observe(t.elapsed().as_secs_f64());
                    self.metrics
                        .index_batches
                        .observe(self.pending.len() as f64);
                    let last = self.pending.iter().map(|(s, _)| *s).max().unwrap_or(0);
                    let bytes = std::mem::take(&mut self.pending_bytes);
                    self.queued.fetch_sub(bytes, Ordering::AcqRel);
                    self.applied.fetch_max(last, Ordering::Release);
                    self.pending.clear();
                }
                Err(e) => {
                    self.metrics.index_failures.inc();
                    self.health.fail(
                        FatalKind::Storage,
                        "index transaction",
                        format!("applying {} logged batches: {e}", self.pending.len()),
                    );
                    self.discard();
                    return;
                }
            }
        }
        for (shard, op) in self.marks.drain(..) {
            self.indexed[shard].fetch_max(op, Ordering::Release);
        }
    }

    /// One bounded step of retention ([`Store::purge`]): due again at once (after whatever
    /// is queued) while there is more, else after `retention.check_ms`. A failure is a
    /// storage failure like any other transaction's.
    fn purge(&mut self) {
        let every = self.purge_every.unwrap_or(Duration::MAX);
        if self.health.is_failed() {
            self.purge_due = Instant::now() + every;
            return;
        }
        match self.store.purge(PURGE_STEP) {
            Ok(p) => {
                let m = &self.metrics.retention_purged;
                m.with_label_values(&["records"]).inc_by(p.records);
                m.with_label_values(&["dedup_runs"]).inc_by(p.runs);
                if p.segments > 0 || p.runs > 0 {
                    tracing::info!(
                        segments = p.segments,
                        records = p.records,
                        id_runs = p.runs,
                        "retention: purged what is older than retention.events_days"
                    );
                }
                self.purge_due = Instant::now() + if p.more { PURGE_PAUSE } else { every };
            }
            Err(e) => {
                self.health
                    .fail(FatalKind::Storage, "retention", e.to_string());
                self.purge_due = Instant::now() + every;
            }
        }
    }

    /// After a fatal failure: drops what waits to be applied (the writer must not wait for
    /// it) and marks the stop as not clean.
    fn discard(&mut self) {
        self.ok.store(false, Ordering::Release);
        let bytes = std::mem::take(&mut self.pending_bytes);
        self.queued.fetch_sub(bytes, Ordering::AcqRel);
        self.pending.clear();
        self.marks.clear();
    }

    fn barrier(&self, b: Barrier) {
        if self.health.is_failed() {
            let failed =
                || PipelineError::Storage("the store failed; the server is restarting".into());
            match b {
                Barrier::Export { reply, .. } => {
                    let _ = reply.send(Err(failed()));
                }
                Barrier::Erase { reply, .. } => {
                    let _ = reply.send(Err(failed()));
                }
                Barrier::Images { reply, .. } => {
                    let _ = reply.send(Err(failed()));
                }
                Barrier::Notify(w) => w.done(),
            }
            return;
        }
        match b {
            Barrier::Export { user, state, reply } => {
                let _ = reply.send(self.export(&user, state));
            }
            Barrier::Erase {
                user,
                events,
                close,
                reply,
            } => {
                let r = self
                    .store
                    .erase_detached(&user)
                    .map(|c| EraseCounts { events, ..c })
                    .map_err(|e| {
                        self.health
                            .fail(FatalKind::Storage, "erasure", e.to_string());
                        PipelineError::Storage(e.to_string())
                    });
                if r.is_ok() && close {
                    self.hub.close_user(&user, "user data erased");
                    tracing::info!(user = %user.short(), "user erased");
                }
                let _ = reply.send(r);
            }
            Barrier::Images { users, reply } => {
                let mut out = Vec::with_capacity(users.len());
                for (user, state) in users {
                    match self.store.export_with(&user, false) {
                        Ok(r) => {
                            let r = r.unwrap_or_default();
                            out.push((
                                user,
                                UserImage {
                                    state,
                                    decisions: r.decisions,
                                    learn: r.learn,
                                },
                            ));
                        }
                        Err(e) => {
                            let _ = reply.send(Err(PipelineError::Storage(e.to_string())));
                            return;
                        }
                    }
                }
                let _ = reply.send(Ok(out));
            }
            Barrier::Notify(w) => w.done(),
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
