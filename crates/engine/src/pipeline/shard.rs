//! A shard worker: one thread that owns the state of the users hashed to it.
//!
//! A thin loop over three seams: an event source (its bounded queue), a sink (the writer, which
//! commits) and a clock. It waits for a message or a timer, drains what is queued, and for each
//! input runs the one path every input takes — load the user (checkpoint + replay of the log
//! tail past it), [`crate::decide::step`], then [`Shard::record`]: seal what the step produced
//! with the user's key and append it to the drain's [`Work`] — and hands that one `Work` to the
//! sink. Events, `decide` requests and timer ticks differ only in their [`Input`].
//!
//! Also here: deduplication of event ids (in-flight ids in memory, committed ones in the
//! store's `seen` table behind each user's filter of them, one read snapshot per drain), the
//! timer heap for users with an ongoing hover or dwell, checkpoints of dirty users (every
//! `pipeline.checkpoint_ms`, on eviction and at shutdown), the compact form of users at rest
//! (`pipeline.compact_idle_ms`, [`super::compact`]) and recovery after an unclean stop.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};

use super::compact::{Compact, Packer};
use super::indexer::Barrier;
use super::seen::{SeenFilter, MAX_IDS};
use super::writer::{After, Failed, Work, WriterMsg};
use super::{EraseCounts, EventsReply, IngestOutcome, PipelineError, Reply, ShardMsg};
use crate::bandits::learner::LearnMsg;
use crate::bandits::record::LearnRecord;
use crate::bandits::Bandits;
use crate::config::Config;
use crate::decide::{self, Cause, Input, JournalRecord, LearnCache, LearnLookup, Note, Out};
use crate::delivery::{frames, Hub};
use crate::experiments::Experiments;
use crate::features::UserState;
use crate::metrics::Metrics;
use crate::segments::service::SegmentService;
use trimtab_privacy::crypto::Sealer;
use trimtab_privacy::{KeyMap, Pseudonymizer, Table, UserKey};
use trimtab_rules::Rules;
use trimtab_store::{Reader, Store, UserRows};
use trimtab_wire::Event;

/// The time source of a shard (tests use a fixed or manual clock).
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> i64;
}

/// Wall-clock time.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        trimtab_util::now_ms()
    }
}

/// Where a shard's work goes: the writer in production (tests may collect it instead).
pub trait Sink: Send {
    /// Hands `msg` over, blocking while the writer's queue is full (backpressure). `Err` when
    /// the writer is gone.
    fn send(&self, msg: WriterMsg) -> Result<(), ()>;
}

/// The writer's queue.
pub(crate) struct ChannelSink(pub Sender<WriterMsg>);

impl Sink for ChannelSink {
    fn send(&self, msg: WriterMsg) -> Result<(), ()> {
        self.0.send(msg).map_err(|_| ())
    }
}

/// The shared, live-updated services a shard consults per input.
#[derive(Clone)]
pub(crate) struct Live {
    pub rules: Rules,
    pub experiments: Experiments,
    pub segments: Option<Arc<SegmentService>>,
    pub bandits: Bandits,
    /// Served models, for `predict()` in rules.
    pub models: Arc<trimtab_learn::serving::Models>,
    /// The learner's queue (None when learning is off, e.g. in unit tests).
    pub learner: Option<Sender<LearnMsg>>,
}

/// Most messages handled in one drain (bounds the latency of the drain's first message).
const MAX_DRAIN: usize = 256;

struct Entry {
    state: UserState,
    sealer: Sealer,
    /// Recent learning records of bandit decisions (newest version).
    learn: LearnCache,
    /// Fingerprints of event ids that no indexed checkpoint covers yet (so the store's
    /// `seen_runs` may not hold them), oldest first.
    pending: Vec<u64>,
    /// Op of the Work holding the user's latest checkpoint: once it is indexed, the first
    /// `covered` ids of `pending` are in `seen_runs`.
    ckpt_op: u64,
    /// How many of `pending` the latest checkpoint covers: all those there when it was
    /// taken (every accepted event is in the state before any checkpoint after it).
    covered: u32,
    /// Whether the store may hold rows of this user (else its `seen` table has none).
    stored: bool,
    /// A filter of the ids the store holds for the user: certain when an id is not among
    /// them, so a batch of new ids needs no store read ([`super::seen`]).
    seen: SeenFilter,
    last_op: u64,
    last_used: i64,
    timer: Option<i64>,
    /// Since when the state has changes no checkpoint holds.
    dirty_since: Option<i64>,
}

impl Entry {
    /// An entry taken into the cache: nothing pending, no checkpoint in flight, no timer, clean.
    fn new(state: UserState, sealer: Sealer, stored: bool, last_used: i64) -> Entry {
        Entry {
            state,
            sealer,
            learn: LearnCache::default(),
            pending: Vec::new(),
            ckpt_op: 0,
            covered: 0,
            stored,
            seen: SeenFilter::default(),
            last_op: 0,
            last_used,
            timer: None,
            dirty_since: None,
        }
    }
}

pub(crate) struct ShardParts {
    pub idx: usize,
    pub rx: Receiver<ShardMsg>,
    pub failed: Receiver<Failed>,
    pub sink: Box<dyn Sink>,
    pub clock: Arc<dyn Clock>,
    pub store: Arc<Store>,
    pub cfg: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub pseudo: Pseudonymizer,
    /// Per shard: the highest operation whose rows are in the indexed store.
    pub indexed: Arc<Vec<AtomicU64>>,
    pub hub: Arc<Hub>,
    pub live: Live,
    /// Users to replay and checkpoint first (after an unclean stop).
    pub recover: Vec<UserKey>,
    pub recovering: Arc<AtomicUsize>,
}

pub(crate) struct Shard {
    p: ShardParts,
    /// Boxed: the table holds pointers, so its spare capacity (up to half of it) costs 8
    /// bytes a slot rather than a whole entry.
    users: KeyMap<UserKey, Box<Entry>>,
    /// Cached users at rest, in their compact form (counted as cached, with `users`).
    compact: KeyMap<UserKey, Compact>,
    /// When the next pass over `users` for ones at rest is due.
    next_compact: i64,
    packer: Packer,
    /// Estimated bytes of entries made compact since the allocator was last asked to return
    /// freed pages.
    freed_since_release: usize,
    timers: BinaryHeap<Reverse<(i64, UserKey)>>,
    /// Users in the order they became dirty: (since, user).
    dirty: VecDeque<(i64, UserKey)>,
    /// Users whose in-memory state was dropped after a failed commit: (op to wait for, the
    /// next seq to use) — reloaded once the writer has settled that op.
    quarantine: KeyMap<UserKey, (u64, u64)>,
    /// Users evicted with a checkpoint not yet indexed: (op of the eviction, the entry), kept
    /// until that op is indexed, so a user who comes back meanwhile is taken back as it was
    /// instead of loaded from a store whose checkpoint is older (which would mean scanning the
    /// event store for the records past it). In eviction order in `limbo_order`.
    limbo: KeyMap<UserKey, (u64, Box<Entry>)>,
    limbo_order: VecDeque<(u64, UserKey)>,
    /// Users with pending ids and the op of a checkpoint that covers them: pruned once it is
    /// indexed (an idle user keeps no ids).
    prune_after: VecDeque<(u64, UserKey)>,
    op: u64,
    work: Work,
    /// [`Shard::committed`], as of the last [`Snap::refresh`].
    committed: u64,
    /// Users taken into the cache since its size in bytes was last estimated.
    since_size_check: usize,
    /// This shard's part of `pipeline.user_cache_mb`, in bytes (worked out once: the shard
    /// count may come from the machine's CPU quota, which is files to read).
    cache_budget: usize,
    /// The input being run pushes nothing to pages (events a cluster node catches up on).
    quiet: bool,
    /// Where a record is encoded before it is sealed (reused: one allocation a record, the
    /// sealed one, instead of a growing encoding and then the sealed copy).
    scratch: Vec<u8>,
}

/// The cache's size in bytes is estimated (a pass over every entry) once per this many users
/// taken in, or a sixteenth of those cached if more (a constant cost per user taken in), and
/// whenever the count cap is reached.
const SIZE_CHECK_EVERY: usize = 64;

/// An estimate of the bytes one cached user takes: the entry, the state's heap, the ids not yet
/// covered, a filter of stored ids that grew, the learning records, and the table's slot.
fn entry_bytes(e: &Entry) -> usize {
    std::mem::size_of::<Entry>()
        + e.state.heap_bytes()
        + e.pending.capacity() * 8
        + e.seen.heap_bytes()
        + e.learn.heap_bytes()
        + std::mem::size_of::<(UserKey, Box<Entry>)>()
}

/// Users made compact in one go (at about 5 µs each, a few ms of the shard's time).
const COMPACT_CHUNK: usize = 512;

/// Freed memory is returned to the OS once a compaction pass is through, if at least this much
/// was freed since the last time: a forced collection walks the thread's heap and unmaps what
/// is free, 5 – 15 ms of the shard's time after 40 000 users (BENCHMARKS.md), so not for a
/// handful of users. Until then the allocator reuses the freed pages.
const RELEASE_AFTER: usize = 4 << 20;

/// The shard's read snapshot, opened on first use and kept across drains until a write
/// transaction commits (then the next drain opens a fresh one): at a few messages per drain,
/// opening a redb read transaction and its `seen` table was most of a drain's fixed cost.
struct Snap<'s> {
    store: &'s Store,
    reader: Option<Reader<'s>>,
    /// The store's generation the reader (open or still to be opened) is at least as new as.
    generation: u64,
}

/// How long an idle shard keeps a snapshot that later commits have made stale (a live read
/// transaction keeps redb from reusing the pages freed since).
const STALE_SNAPSHOT: Duration = Duration::from_secs(1);

impl<'s> Snap<'s> {
    fn new(store: &'s Store) -> Snap<'s> {
        Snap {
            store,
            reader: None,
            generation: store.generation(),
        }
    }

    /// At the start of a drain: returns how far this shard's operations are indexed, as a lower
    /// bound of what the snapshot holds, and drops the reader if a write committed since it
    /// was opened. `indexed` is read before the generation: the indexer publishes an operation
    /// only after the transaction holding it has committed (and bumped the generation), so an
    /// operation seen here is in every snapshot of this generation.
    fn refresh(&mut self, indexed: &AtomicU64) -> u64 {
        let committed = indexed.load(Ordering::Acquire);
        let g = self.store.generation();
        if g != self.generation {
            self.reader = None;
            self.generation = g;
        }
        committed
    }

    fn get(&mut self) -> Result<&Reader<'s>, PipelineError> {
        if self.reader.is_none() {
            self.reader = Some(self.store.reader().map_err(storage)?);
        }
        Ok(self.reader.as_ref().expect("just opened"))
    }
}

fn storage(e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Storage(e.to_string())
}

/// Stored learning records through the drain's snapshot.
struct Lookup<'a, 's> {
    snap: &'a mut Snap<'s>,
    user: &'a UserKey,
    sealer: &'a Sealer,
}

impl LearnLookup for Lookup<'_, '_> {
    fn learn_record(&mut self, id: &[u8; 16]) -> Option<LearnRecord> {
        let r = self.snap.get().ok()?;
        let b = r.learn_record(self.user, self.sealer, id).ok().flatten()?;
        LearnRecord::decode(&b)
    }
}

impl Shard {
    pub(crate) fn new(p: ShardParts) -> Shard {
        let work = Work {
            shard: p.idx,
            ..Work::default()
        };
        let cache_budget = (p.cfg.pipeline.user_cache_mb.max(1) << 20) / p.cfg.shard_count().max(1);
        Shard {
            p,
            users: KeyMap::default(),
            compact: KeyMap::default(),
            next_compact: 0,
            packer: Packer::default(),
            freed_since_release: 0,
            timers: BinaryHeap::new(),
            dirty: VecDeque::new(),
            quarantine: KeyMap::default(),
            limbo: KeyMap::default(),
            limbo_order: VecDeque::new(),
            prune_after: VecDeque::new(),
            op: 0,
            work,
            committed: 0,
            since_size_check: 0,
            cache_budget,
            quiet: false,
            scratch: Vec::new(),
        }
    }

    fn now(&self) -> i64 {
        self.p.clock.now_ms()
    }

    /// This shard's operations up to here are in the indexed store (or failed) and in the
    /// drain's snapshot: their event ids are in its `seen` table, their users may be evicted
    /// and reloaded.
    fn committed(&self) -> u64 {
        self.committed
    }

    pub(crate) fn run(mut self) {
        self.recover();
        let store = self.p.store.clone();
        let mut snap = Snap::new(&store);
        loop {
            let mut wait = self.next_wake().map_or(Duration::from_secs(3600), |due| {
                Duration::from_millis((due - self.now()).max(0) as u64)
            });
            if snap.reader.is_some() {
                wait = wait.min(STALE_SNAPSHOT);
            }
            let first = select! {
                recv(self.p.rx) -> msg => match msg {
                    Ok(m) => Some(m),
                    Err(_) => break, // all senders gone: shutdown; queue drained
                },
                recv(self.p.failed) -> f => {
                    if let Ok(f) = f { self.failed(f); }
                    None
                },
                default(wait) => None,
            };
            self.committed = snap.refresh(&self.p.indexed[self.p.idx]);
            self.release_limbo();
            if let Some(m) = first {
                self.handle(m, &mut snap);
                for _ in 1..MAX_DRAIN {
                    match self.p.rx.try_recv() {
                        Ok(m) => self.handle(m, &mut snap),
                        Err(_) => break,
                    }
                }
            }
            self.fire_timers(&mut snap);
            self.checkpoint_due(false);
            self.flush();
            self.compact_idle();
        }
        // Shutdown: every dirty user is checkpointed, so the next start replays nothing.
        self.checkpoint_due(true);
        self.flush();
        tracing::debug!(shard = self.p.idx, "shard drained and stopped");
    }

    /// The next timer or checkpoint due.
    fn next_wake(&self) -> Option<i64> {
        let timer = self.timers.peek().map(|Reverse((due, _))| *due);
        let ckpt = self
            .dirty
            .front()
            .map(|(since, _)| since + self.p.cfg.pipeline.checkpoint_ms);
        let compact = (self.p.cfg.pipeline.compact_idle_ms > 0 && !self.users.is_empty())
            .then_some(self.next_compact);
        [timer, ckpt, compact].into_iter().flatten().min()
    }

    /// Puts the users at rest for `pipeline.compact_idle_ms` into their compact form: a pass
    /// over the full entries at most every half of that, [`COMPACT_CHUNK`] users at a time (the
    /// next chunk after the messages queued meanwhile).
    fn compact_idle(&mut self) {
        let after = self.p.cfg.pipeline.compact_idle_ms as i64;
        let now = self.now();
        if after <= 0 || self.users.is_empty() || now < self.next_compact {
            return;
        }
        let t = Instant::now();
        let committed = self.committed();
        let rest: Vec<UserKey> = self
            .users
            .iter_mut()
            .filter_map(|(k, e)| {
                prune(e, committed);
                let at_rest = e.dirty_since.is_none()
                    && e.timer.is_none()
                    && e.pending.is_empty()
                    && e.last_op <= committed
                    && now - e.last_used >= after;
                at_rest.then_some(*k)
            })
            .take(COMPACT_CHUNK)
            .collect();
        let more = rest.len() == COMPACT_CHUNK;
        self.next_compact = if more {
            now
        } else {
            now + (after / 2).max(100)
        };
        let (mut bytes, mut was, mut made) = (0usize, 0usize, 0i64);
        for k in &rest {
            let e = &self.users[k];
            let Some(c) = self.packer.pack(&e.state, e.last_used, e.stored) else {
                continue; // compression failed: it stays as it is
            };
            was += entry_bytes(e);
            bytes += c.bytes();
            made += 1;
            self.users.remove(k);
            self.compact.insert(*k, c);
        }
        if made > 0 {
            // A table that held a burst's users keeps its size when they leave: give it back.
            if self.users.capacity() > 4 * self.users.len().max(64) {
                self.users.shrink_to_fit();
            }
            self.p.metrics.users_compact.add(made);
            self.freed_since_release += was;
        }
        // Not while messages wait: a later pass does it.
        let release = !more && self.freed_since_release >= RELEASE_AFTER && self.p.rx.is_empty();
        if release {
            self.freed_since_release = 0;
            trimtab_util::memory::release();
        } else if made == 0 {
            return;
        }
        tracing::debug!(
            shard = self.p.idx,
            users = made,
            bytes,
            was,
            released = release,
            us = t.elapsed().as_micros() as u64,
            "users at rest made compact"
        );
    }

    /// Takes a compact user back into a full entry (`false` when it was not compact).
    fn expand(&mut self, user: &UserKey) -> bool {
        let Some(c) = self.compact.remove(user) else {
            return false;
        };
        self.p.metrics.users_compact.dec();
        // Its key is in the key store (an erasure takes the user from here first).
        let (Some(state), Some(sealer)) =
            (self.packer.unpack(&c), self.p.store.existing_sealer(user))
        else {
            // Made by this process a moment ago: cannot happen; the store has the state.
            tracing::error!(user = %user.short(), "a compact user does not unpack; loading it from the store");
            self.p.metrics.users_cached.dec();
            return false;
        };
        // Every write of it was indexed when it was made compact: `last_op` 0 will do.
        let e = Entry::new(state, sealer, c.stored(), c.last_used());
        self.users.insert(*user, Box::new(e));
        true
    }

    /// Hands the drain's work to the writer.
    fn flush(&mut self) {
        if self.work.is_empty() {
            return;
        }
        let mut w = std::mem::take(&mut self.work);
        self.work.shard = self.p.idx;
        // The next drain is likely the size of this one: no growing by doubling.
        self.work.rows.reserve(w.rows.len());
        self.work.after.reserve(w.after.len());
        w.op = self.op;
        if self.p.sink.send(WriterMsg::Commit(Box::new(w))).is_err() {
            tracing::error!(shard = self.p.idx, "the writer is gone; work dropped");
        }
    }

    fn send_barrier(&mut self, msg: WriterMsg) {
        self.flush();
        if self.p.sink.send(msg).is_err() {
            tracing::error!(shard = self.p.idx, "the writer is gone");
        }
    }

    fn handle(&mut self, msg: ShardMsg, snap: &mut Snap<'_>) {
        // Fault injection (`failpoints` builds only): the shard panics here.
        fail::fail_point!("shard-message");
        match msg {
            ShardMsg::Events { users, reply, push } => {
                self.quiet = !push;
                self.events(users, reply, snap);
                self.quiet = false;
            }
            ShardMsg::Decide {
                user,
                slot,
                candidates,
                reply,
            } => self.decide(user, slot, candidates, reply, snap),
            ShardMsg::Export { user, reply } => {
                let now = self.now();
                let state = match self.entry(&user, snap, false) {
                    Ok(Some(e)) => Some(crate::decide::view::state_json(&user, &e.state, now)),
                    Ok(None) => None,
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        return;
                    }
                };
                self.send_barrier(WriterMsg::Barrier(Barrier::Export { user, state, reply }));
            }
            ShardMsg::Peek { user, reply } => {
                let state = self
                    .entry(&user, snap, false)
                    .map(|e| e.map(|e| Box::new(e.state.clone())));
                let _ = reply.send(state);
            }
            ShardMsg::Checkpoint { done } => {
                self.checkpoint_due(true);
                self.work.after.push(After::Notify(done));
            }
            ShardMsg::Erase { user, reply } => {
                // How many events it had (its records in the event store stay, unreadable).
                let events = match self.entry(&user, snap, false) {
                    Ok(Some(e)) => e.state.events,
                    _ => 0,
                };
                self.forget(user, events, true, true, reply);
            }
            ShardMsg::Images { users, reply } => {
                let mut states = Vec::with_capacity(users.len());
                for user in users {
                    match self.entry(&user, snap, false) {
                        Ok(Some(e)) => states.push((user, e.state.encode())),
                        Ok(None) => {}
                        Err(e) => {
                            let _ = reply.send(Err(e));
                            return;
                        }
                    }
                }
                self.send_barrier(WriterMsg::Barrier(Barrier::Images {
                    users: states,
                    reply,
                }));
            }
            ShardMsg::Restore { user, image, reply } => self.restore(user, *image, reply),
            ShardMsg::Stats { deltas, reply } => {
                self.op += 1;
                self.work.stats.extend(deltas);
                self.work.after.push(After::Done(reply));
            }
        }
    }

    /// Drops the user from memory and detaches their key: from now on their records get a
    /// new one, and the writer shreds the old one (and its rows) after committing what is
    /// queued before. With `always` false nothing is sent when the user has no key here.
    fn forget(
        &mut self,
        user: UserKey,
        events: u64,
        close: bool,
        always: bool,
        reply: Reply<EraseCounts>,
    ) {
        if self.users.remove(&user).is_some() {
            self.p.metrics.users_cached.dec();
        }
        if self.compact.remove(&user).is_some() {
            self.p.metrics.users_cached.dec();
            self.p.metrics.users_compact.dec();
        }
        self.limbo.remove(&user);
        self.quarantine.remove(&user);
        let had_key = self.p.store.detach_key(&user).is_some();
        if !had_key && !always {
            return;
        }
        self.send_barrier(WriterMsg::Barrier(Barrier::Erase {
            user,
            events,
            close,
            reply,
        }));
    }

    /// Replaces what this node holds of the user with a cluster checkpoint's image.
    fn restore(&mut self, user: UserKey, image: super::UserImage, reply: Reply<()>) {
        // No state: the user starts anew (a cluster node about to read the partition again).
        let state = if image.state.is_empty() {
            Some(UserState::default())
        } else {
            UserState::decode(&image.state)
        };
        let Some(state) = state else {
            let _ = reply.send(Err(PipelineError::Storage(
                "the checkpoint's state does not decode (another trimtab version?)".into(),
            )));
            return;
        };
        // Records of an earlier ownership: gone, as in an erasure (the sockets stay open). A
        // user without a key here has none (and the erasure would take the key made below).
        let (erased, _) = tokio::sync::oneshot::channel();
        self.forget(user, 0, false, false, erased);
        self.op += 1;
        let now = self.now();
        let sealer = self.p.store.sealer(&user);
        let mut e = Box::new(Entry {
            last_op: self.op,
            ..Entry::new(state, sealer, true, now)
        });
        let mut rows = checkpoint_rows(&user, &mut e);
        for (id, plain) in &image.decisions {
            rows.decisions
                .push((*id, e.sealer.seal(&user, Table::Decision, plain)));
        }
        for (id, plain) in &image.learn {
            rows.learn
                .push((*id, e.sealer.seal(&user, Table::Learn, plain)));
        }
        let ongoing = e.state.has_ongoing();
        self.evict_if_full();
        self.users.insert(user, e);
        self.p.metrics.users_cached.inc();
        self.work.rows.push(rows);
        self.work.after.push(After::Done(reply));
        if ongoing {
            self.schedule(user, now + self.p.cfg.features.tick_ms);
        }
    }

    /// The user's entry: cached, else loaded from the store (checkpoint + replay of the tail),
    /// else (with `create`) a new user. `Ok(None)`: unknown and not created.
    fn entry(
        &mut self,
        user: &UserKey,
        snap: &mut Snap<'_>,
        create: bool,
    ) -> Result<Option<&mut Entry>, PipelineError> {
        let now = self.now();
        if let Some(&(op, _)) = self.quarantine.get(user) {
            if self.committed() < op {
                return Err(PipelineError::Storage(
                    "a previous write of this user failed; retry shortly".into(),
                ));
            }
        }
        if !self.users.contains_key(user) && !self.expand(user) {
            if let Some((_, e)) = self.limbo.remove(user) {
                self.evict_if_full();
                self.users.insert(*user, e);
                self.p.metrics.users_cached.inc();
            }
        }
        if !self.users.contains_key(user) {
            let loaded = self.load(user, snap)?;
            let entry = match loaded {
                Some(e) => e,
                None if create => {
                    Entry::new(UserState::default(), self.p.store.sealer(user), false, now)
                }
                None => return Ok(None),
            };
            self.evict_if_full();
            let mut entry = entry;
            if let Some((_, next_seq)) = self.quarantine.remove(user) {
                entry.state.next_seq = entry.state.next_seq.max(next_seq);
            }
            let replayed = entry.dirty_since.is_some();
            let ongoing = entry.state.has_ongoing();
            self.users.insert(*user, Box::new(entry));
            self.p.metrics.users_cached.inc();
            if replayed {
                self.dirty.push_back((now, *user));
            }
            if ongoing {
                self.schedule(*user, now + self.p.cfg.features.tick_ms);
            }
        }
        // Just inserted or present: cannot be missing.
        let e = self.users.get_mut(user).expect("entry present");
        e.last_used = now;
        Ok(Some(e))
    }

    /// Loads a stored user: the checkpoint, then every log record past it replayed.
    fn load(&self, user: &UserKey, snap: &mut Snap<'_>) -> Result<Option<Entry>, PipelineError> {
        let Some(l) = snap
            .get()?
            .load(user, |b| UserState::decode(b).map(|s| s.next_seq))
            .map_err(storage)?
        else {
            return Ok(None);
        };
        let mut state = match &l.state {
            Some(b) => UserState::decode(b).unwrap_or_else(|| {
                tracing::error!(user = %user.short(), "checkpoint does not decode; replaying the log from the start");
                UserState::default()
            }),
            None => UserState::default(),
        };
        if l.unreadable > 0 {
            tracing::error!(user = %user.short(), records = l.unreadable, "log records that do not decrypt were skipped");
        }
        let replayed = !l.tail.is_empty();
        for (seq, ev, j) in &l.tail {
            let ev: Option<Event> = ev.as_deref().and_then(|b| postcard::from_bytes(b).ok());
            let j = j.as_deref().and_then(JournalRecord::decode);
            decide::journal::replay(
                &mut state,
                &self.p.cfg.features,
                *seq,
                ev.as_ref(),
                j.as_ref(),
            );
        }
        if replayed {
            self.p.metrics.replayed.inc_by(l.tail.len() as u64);
        }
        // Kept until a checkpoint after this load is indexed.
        let pending = l.tail_ids.iter().map(trimtab_store::fingerprint).collect();
        Ok(Some(Entry {
            pending,
            dirty_since: replayed.then(|| self.now()),
            ..Entry::new(state, l.sealer, true, self.now())
        }))
    }

    /// Lets go of evicted users whose checkpoint is indexed (loading them reads it), and of
    /// the ids that indexed checkpoints cover.
    fn release_limbo(&mut self) {
        let committed = self.committed();
        while let Some(&(op, k)) = self.prune_after.front() {
            if op > committed {
                break;
            }
            self.prune_after.pop_front();
            if let Some(e) = self.users.get_mut(&k) {
                prune(e, committed);
            }
        }
        while let Some(&(op, k)) = self.limbo_order.front() {
            if op > committed {
                break;
            }
            self.limbo_order.pop_front();
            if self.limbo.get(&k).is_some_and(|(o, _)| *o == op) {
                self.limbo.remove(&k);
            }
        }
    }

    /// Drops the least recently used tenth of the cache, skipping users with uncommitted
    /// writes or running timers; dirty ones are checkpointed on the way out.
    fn evict_if_full(&mut self) {
        let cap = self.p.cfg.pipeline.user_cache.max(1);
        self.since_size_check += 1;
        let cached = self.users.len() + self.compact.len();
        let full = cached >= cap;
        // In bytes too (`pipeline.user_cache_mb`, shared by the shards): a count alone lets a
        // cache of unusually large states grow without bound.
        let budget = self.cache_budget;
        let mut excess = 0usize;
        let mut bytes = 0usize;
        let due = SIZE_CHECK_EVERY.max(cached / 16);
        if full || self.since_size_check >= due {
            self.since_size_check = 0;
            bytes = self.users.values().map(|e| entry_bytes(e)).sum::<usize>()
                + self.compact.values().map(Compact::bytes).sum::<usize>();
            if bytes > budget {
                // Down to 90% of the budget, so that the next few users do not evict again.
                excess = bytes - budget / 10 * 9;
            }
        }
        let gauge = |s: &Self, b: usize| {
            s.p.metrics
                .users_cached_bytes
                .with_label_values(&[&s.p.idx.to_string()])
                .set(b as i64)
        };
        if !full && excess == 0 {
            if bytes > 0 {
                gauge(self, bytes);
            }
            return;
        }
        let committed = self.committed();
        // Compact users are at rest, clean: dropped without a checkpoint.
        let mut idle: Vec<(i64, UserKey)> = self
            .users
            .iter()
            .filter(|(_, e)| e.last_op <= committed && e.timer.is_none())
            .map(|(k, e)| (e.last_used, *k))
            .chain(self.compact.iter().map(|(k, c)| (c.last_used(), *k)))
            .collect();
        idle.sort_unstable();
        // The checkpoints written here go out in a Work whose op is at least this one.
        self.op += 1;
        let op = self.op;
        // A tenth of the count when it is full; as many as the bytes over the budget need.
        let by_count = if full { cap / 10 + 1 } else { 0 };
        let mut freed = 0usize;
        let mut evicted = 0usize;
        for (_, k) in idle {
            if evicted >= by_count && freed >= excess {
                break;
            }
            if let Some(c) = self.compact.remove(&k) {
                evicted += 1;
                freed += c.bytes();
                self.p.metrics.users_cached.dec();
                self.p.metrics.users_compact.dec();
            } else if let Some(mut e) = self.users.remove(&k) {
                evicted += 1;
                freed += entry_bytes(&e);
                if e.dirty_since.is_some() {
                    self.work.rows.push(checkpoint_rows(&k, &mut e));
                    e.last_op = op;
                    cover(&mut e, op);
                    self.limbo.insert(k, (op, e));
                    self.limbo_order.push_back((op, k));
                }
                self.p.metrics.users_cached.dec();
            }
        }
        // Ids that arrive from here on are not covered by the checkpoints just taken.
        self.op += 1;
        if bytes > 0 {
            gauge(self, bytes.saturating_sub(freed));
        }
    }

    fn events(
        &mut self,
        users: Vec<(UserKey, Vec<Event>)>,
        reply: EventsReply,
        snap: &mut Snap<'_>,
    ) {
        self.op += 1;
        let mut outcome = IngestOutcome::default();
        let mut ids = Vec::new();
        let ws = matches!(reply, EventsReply::Ws { .. });
        for (user, events) in users {
            match self.user_events(user, events, snap, ws.then_some(&mut ids)) {
                Ok((a, d)) => {
                    outcome.accepted += a;
                    outcome.duplicates += d;
                }
                Err(e) => {
                    match reply {
                        EventsReply::Http(join) => join.part(Err(e)),
                        EventsReply::Ws { socket, .. } => {
                            // The detail is the server's (logged where it failed), not the
                            // client's: the code and a generic message only.
                            tracing::error!(shard = self.p.idx, error = %e, "loading or storing a user failed; the socket's batch is refused");
                            let f = frames::error(
                                trimtab_wire::Code::StorageUnavailable,
                                "storing these events failed; retry them with the same ids",
                                None,
                                &ids,
                            );
                            self.p.hub.send_to(&socket, f);
                        }
                    }
                    return;
                }
            }
        }
        self.p
            .metrics
            .events_duplicate
            .inc_by(outcome.duplicates as u64);
        self.work.after.push(match reply {
            EventsReply::Http(join) => After::Http { join, outcome },
            EventsReply::Ws { socket, mut extra } => {
                ids.append(&mut extra);
                let ack = frames::ack(ids.iter().map(String::as_str), outcome.duplicates);
                After::Ws { socket, ack, ids }
            }
        });
    }

    /// One user's new events through the loop. Returns (accepted, duplicates); with `ids`,
    /// appends every event's id to it (for the socket's `ack`).
    fn user_events(
        &mut self,
        user: UserKey,
        events: Vec<Event>,
        snap: &mut Snap<'_>,
        mut ids: Option<&mut Vec<String>>,
    ) -> Result<(usize, usize), PipelineError> {
        let committed = self.committed();
        let pseudo = self.p.pseudo.clone();
        // Each id is hashed once, here.
        let hashes: Vec<[u8; 16]> = events
            .iter()
            .map(|e| pseudo.event_id(&user, &e.id))
            .collect();
        let entry = self.entry(&user, snap, true)?.expect("created");
        prune(entry, committed);
        let seen = if entry.stored {
            self.stored_ids(&user, &hashes, snap)?
        } else {
            vec![false; hashes.len()]
        };
        let (mut accepted, mut duplicates) = (0, 0);
        for ((ev, h), before) in events.into_iter().zip(&hashes).zip(seen) {
            let entry = self.users.get_mut(&user).expect("entry present");
            let fp = trimtab_store::fingerprint(h);
            let dup = before || entry.pending.contains(&fp);
            if dup {
                duplicates += 1;
            } else {
                entry.pending.push(fp);
                accepted += 1;
            }
            let ev = Arc::new(ev);
            if !dup {
                self.step(user, Input::Event(&ev), Some(*h), snap);
            }
            if let Some(ids) = ids.as_deref_mut() {
                // The rules' view has let go of the event: its id moves, no copy.
                ids.push(Arc::try_unwrap(ev).map_or_else(|a| a.id.clone(), |e| e.id));
            }
        }
        Ok((accepted, duplicates))
    }

    /// For each id hash: whether the store holds it for this cached user. The user's filter
    /// answers when it is sure; else one read — which fills the filter if it is not built.
    fn stored_ids(
        &mut self,
        user: &UserKey,
        hashes: &[[u8; 16]],
        snap: &mut Snap<'_>,
    ) -> Result<Vec<bool>, PipelineError> {
        let entry = self.users.get_mut(user).expect("entry present");
        let fps: Vec<u64> = hashes.iter().map(trimtab_store::fingerprint).collect();
        if entry.seen.usable() && !fps.iter().any(|f| entry.seen.may_hold(*f)) {
            return Ok(vec![false; fps.len()]);
        }
        self.p.metrics.dedup_reads.inc();
        if entry.seen.built() {
            return snap.get()?.seen_many(user, hashes).map_err(storage);
        }
        // Not built: every stored id, unless there are more than the largest filter holds
        // well (then it is saturated and the batch is answered by the usual read).
        let mut stored = Vec::new();
        let mut all = true;
        snap.get()?
            .seen_fps(user, |fp| {
                stored.push(fp);
                all = stored.len() <= MAX_IDS;
                all
            })
            .map_err(storage)?;
        entry.seen.build(&stored);
        if !all {
            return snap.get()?.seen_many(user, hashes).map_err(storage);
        }
        Ok(fps.iter().map(|f| stored.contains(f)).collect())
    }

    fn decide(
        &mut self,
        user: UserKey,
        slot: String,
        candidates: Vec<String>,
        reply: Reply<Decision>,
        snap: &mut Snap<'_>,
    ) {
        self.op += 1;
        if let Err(e) = self.entry(&user, snap, true) {
            let _ = reply.send(Err(e));
            return;
        }
        let input = Input::Decide {
            slot: &slot,
            candidates: &candidates,
        };
        let (answer, stored) = self.step(user, input, None, snap);
        let Some(d) = answer else {
            let _ = reply.send(Err(PipelineError::Stopped));
            return;
        };
        if stored {
            // A new decision: the page sees it only once it is durable.
            self.work.after.push(After::Decided {
                reply,
                decision: Box::new(d),
            });
        } else {
            let _ = reply.send(Ok(d));
        }
    }

    /// Runs one input of a cached user through [`decide::step`] and records the result.
    /// Returns the `decide` answer and whether it is a new decision (to be stored first).
    fn step(
        &mut self,
        user: UserKey,
        input: Input<'_>,
        id_hash: Option<[u8; 16]>,
        snap: &mut Snap<'_>,
    ) -> (Option<Decision>, bool) {
        let now = self.now();
        let live = &self.p.live;
        let cfg = &self.p.cfg;
        let view = decide::Snapshot {
            features: &cfg.features,
            delivery: &cfg.delivery,
            rules: &live.rules,
            experiments: &live.experiments,
            bandits: &live.bandits,
            segments: live.segments.as_deref(),
            models: &live.models,
            metrics: &self.p.metrics,
        };
        let entry = self.users.get_mut(&user).expect("entry present");
        let mut out = Out::default();
        // An event takes the next seq; other inputs only if they change the state.
        let seq = entry.state.next_seq;
        if matches!(input, Input::Event(_)) {
            entry.state.next_seq += 1;
        }
        {
            let mut lookup = Lookup {
                snap,
                user: &user,
                sealer: &entry.sealer,
            };
            decide::step(
                &view,
                &user,
                &mut entry.state,
                &mut entry.learn,
                &mut lookup,
                input,
                now,
                &mut out,
            );
        }
        let cause = match input {
            Input::Event(_) => Cause::Event,
            Input::Tick => Cause::Tick,
            Input::Decide { .. } => Cause::Decide,
        };
        if cause != Cause::Event && out.changed_state() {
            entry.state.next_seq += 1;
        }
        let stored_decision = !out.decisions.is_empty() && cause == Cause::Decide;
        let answer = out.answer.take();
        self.record(user, seq, input, id_hash, cause, out, now);
        (answer, stored_decision)
    }

    /// Seals what a step produced and appends it to the drain's work; passes notes on.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        user: UserKey,
        seq: u64,
        input: Input<'_>,
        id_hash: Option<[u8; 16]>,
        cause: Cause,
        out: Out,
        now: i64,
    ) {
        let entry = self.users.get_mut(&user).expect("entry present");
        let mut rows = UserRows::new(user, entry.sealer.row());
        let scratch = &mut self.scratch;
        if let (Input::Event(ev), Some(h)) = (input, id_hash) {
            let plain = encode_into(scratch, &**ev);
            rows.events
                .push((seq, h, entry.sealer.seal(&user, Table::Event, plain)));
            self.work.events += 1;
            let page = &entry.state.page;
            self.p.hub.publish(|| {
                serde_json::json!({"type": "event", "ts": ev.received_ms, "user": user.hex(),
                    "event": ev.kind().as_str(), "target": ev.target, "session": ev.session,
                    "props": ev.props_json(), "page": page})
                .to_string()
            });
        }
        let changed = cause == Cause::Event || out.changed_state();
        if out.changed_state() {
            let j = JournalRecord {
                at: now,
                cause,
                effects: out.effects,
            };
            let plain = encode_into(scratch, &j);
            rows.journal
                .push((seq, entry.sealer.seal(&user, Table::Journal, plain)));
        }
        for (id, rec) in &out.learn {
            let plain = encode_into(scratch, rec);
            rows.learn
                .push((*id, entry.sealer.seal(&user, Table::Learn, plain)));
        }
        for d in out.decisions {
            let idb = Decision::id_bytes(&d.id).unwrap_or([0; 16]);
            let plain = encode_into(scratch, &d);
            rows.decisions
                .push((idb, entry.sealer.seal(&user, Table::Decision, plain)));
            if cause != Cause::Decide && !self.quiet {
                let frame = frames::adjust(&d);
                self.work.after.push(After::Push {
                    user,
                    frame,
                    decision: Box::new(d),
                });
            }
        }
        let part = self.p.cfg.cluster.partition_of(&user);
        self.work.stats.extend(out.stats.into_iter().map(|mut d| {
            if let Some(p) = part {
                d.experiment = crate::config::partition_group(&d.experiment, p);
            }
            d.into_stat()
        }));
        for n in out.notes {
            let msg = match n {
                Note::Chosen { id, rec } => LearnMsg::Chosen { id, rec },
                Note::Reward { id, slot, kind } => {
                    self.p
                        .metrics
                        .bandit_rewards
                        .with_label_values(&[&slot, kind.as_str()])
                        .inc();
                    LearnMsg::Outcome { id, slot, kind }
                }
            };
            // Events a cluster node catches up on were learned from when they happened (every
            // node's learner hears every node's decisions): not again.
            if self.quiet {
                continue;
            }
            self.p.live.bandits.share(&msg);
            // A lost message costs an online update, not data: the log has the record.
            if let Some(tx) = &self.p.live.learner {
                let _ = tx.try_send(msg);
            }
        }
        if changed {
            entry.last_op = self.op;
            entry.stored = true;
            if entry.dirty_since.is_none() {
                entry.dirty_since = Some(now);
                self.dirty.push_back((now, user));
            }
        }
        let ongoing = entry.state.has_ongoing();
        if !rows.is_empty() {
            self.work.rows.push(rows);
        }
        if ongoing {
            self.schedule(user, now + self.p.cfg.features.tick_ms);
        }
    }

    fn schedule(&mut self, user: UserKey, due: i64) {
        if let Some(e) = self.users.get_mut(&user) {
            if e.timer.is_none() {
                e.timer = Some(due);
                self.timers.push(Reverse((due, user)));
            }
        }
    }

    /// Re-evaluates users with an ongoing hover/dwell whose timer is due.
    fn fire_timers(&mut self, snap: &mut Snap<'_>) {
        let now = self.now();
        while let Some(Reverse((due, user))) = self.timers.peek().copied() {
            if due > now {
                break;
            }
            self.timers.pop();
            let Some(entry) = self.users.get_mut(&user) else {
                continue; // erased or dropped meanwhile
            };
            if entry.timer != Some(due) {
                continue;
            }
            entry.timer = None;
            self.op += 1;
            self.step(user, Input::Tick, None, snap);
        }
    }

    /// Checkpoints users dirty for at least `checkpoint_ms` (`all`: every dirty user).
    fn checkpoint_due(&mut self, all: bool) {
        let now = self.now();
        let interval = self.p.cfg.pipeline.checkpoint_ms;
        let committed = self.committed();
        // The checkpoints go out in the Work flushed after this, under a new op: the op of a
        // Work flushed before may be indexed already, and an indexed op must mean that the
        // checkpoint (and the ids it covers) is in the store.
        let mut bumped = false;
        while let Some(&(since, user)) = self.dirty.front() {
            if !all && since + interval > now {
                break;
            }
            self.dirty.pop_front();
            if !bumped {
                self.op += 1;
                bumped = true;
            }
            let Some(e) = self.users.get_mut(&user) else {
                continue; // evicted (checkpointed then) or erased
            };
            if e.dirty_since != Some(since) {
                continue; // checkpointed since, and dirty again later (queued again)
            }
            self.work.rows.push(checkpoint_rows(&user, e));
            e.last_op = self.op;
            prune(e, committed);
            cover(e, self.op);
            if !e.pending.is_empty() {
                // Its ids are in `seen_runs` once this checkpoint is indexed: forget them then.
                self.prune_after.push_back((self.op, user));
            }
        }
    }

    /// A failed commit: drop those users' state (it ran ahead of the disk); they reload from
    /// the store once the writer has settled every operation sent for them.
    fn failed(&mut self, f: Failed) {
        for u in f.users {
            if let Some((_, e)) = self.limbo.remove(&u) {
                self.quarantine
                    .insert(u, (e.last_op.max(f.op), e.state.next_seq));
            }
            if let Some(e) = self.users.remove(&u) {
                self.p.metrics.users_cached.dec();
                self.quarantine
                    .insert(u, (e.last_op.max(f.op), e.state.next_seq));
            }
            if let Some(c) = self.compact.remove(&u) {
                self.p.metrics.users_cached.dec();
                self.p.metrics.users_compact.dec();
                let next_seq = self.packer.unpack(&c).map_or(0, |s| s.next_seq);
                self.quarantine.insert(u, (f.op, next_seq));
            }
        }
    }

    /// After an unclean stop: replays and checkpoints the users whose log goes past their
    /// checkpoint, a chunk at a time, before taking any message.
    fn recover(&mut self) {
        let users = std::mem::take(&mut self.p.recover);
        if users.is_empty() {
            return;
        }
        let t = Instant::now();
        let store = self.p.store.clone();
        let replayed_before = self.p.metrics.replayed.get();
        for chunk in users.chunks(256) {
            let mut snap = Snap::new(&store);
            self.committed = snap.refresh(&self.p.indexed[self.p.idx]);
            // The Work below carries op + 1.
            let next_op = self.op + 1;
            for u in chunk {
                match self.entry(u, &mut snap, false) {
                    Ok(Some(e)) => {
                        if e.dirty_since.is_some() {
                            cover(e, next_op);
                            let rows = checkpoint_rows(u, e);
                            self.work.rows.push(rows);
                            self.prune_after.push_back((next_op, *u));
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(user = %u.short(), error = %e, "recovery: cannot load user")
                    }
                }
            }
            drop(snap);
            self.op += 1;
            self.flush();
        }
        self.dirty
            .retain(|(_, u)| self.users.get(u).is_some_and(|e| e.dirty_since.is_some()));
        self.p.recovering.fetch_sub(1, Ordering::Relaxed);
        tracing::info!(
            shard = self.p.idx,
            users = users.len(),
            records = self.p.metrics.replayed.get() - replayed_before,
            ms = t.elapsed().as_millis() as u64,
            "recovered: log tails replayed and checkpointed"
        );
    }
}

/// Forgets the ids an indexed checkpoint covers (they are in the store's `seen_runs`).
fn prune(e: &mut Entry, committed: u64) {
    if committed >= e.ckpt_op && e.covered > 0 {
        let n = (e.covered as usize).min(e.pending.len());
        // In the store now: the filter must say so.
        for fp in e.pending.drain(..n) {
            e.seen.insert(fp);
        }
        e.covered = 0;
        if e.pending.is_empty() {
            e.pending = Vec::new();
        }
    }
}

/// A checkpoint of the user goes out in the Work of `op`: it covers every id pending now.
fn cover(e: &mut Entry, op: u64) {
    e.ckpt_op = op;
    e.covered = u32::try_from(e.pending.len()).unwrap_or(u32::MAX);
}

/// `v` in postcard, in `buf` (cleared first; it keeps its allocation for the next record).
/// The same bytes as the types' own `encode`, which tests compare.
fn encode_into<'b, T: serde::Serialize + ?Sized>(buf: &'b mut Vec<u8>, v: &T) -> &'b [u8] {
    buf.clear();
    // Plain data: postcard into a Vec cannot fail.
    *buf = postcard::to_extend(v, std::mem::take(buf)).expect("postcard into a Vec");
    buf
}

/// The checkpoint of a dirty user (marks it clean).
fn checkpoint_rows(user: &UserKey, e: &mut Entry) -> UserRows {
    let mut rows = UserRows::new(*user, e.sealer.row());
    let sealed = e.sealer.seal(user, Table::State, &e.state.encode());
    rows.checkpoint = Some((e.state.next_seq, sealed));
    e.dirty_since = None;
    e.stored = true;
    rows
}

use super::Decision;

#[cfg(test)]
mod tests {
    use super::{encode_into, Decision};

    fn decision(slot: &str, params: usize) -> Decision {
        Decision {
            id: "d".repeat(8),
            slot: slot.to_string(),
            variant: "v".to_string(),
            params: (0..params)
                .map(|i| (format!("k{i}"), "x".repeat(i)))
                .collect(),
            source: "rule".to_string(),
            rule: Some("r".to_string()),
            experiment: None,
            arm: None,
            propensity: 1.0,
            ts: 1_700_000_000_000,
            session: "s".to_string(),
            trigger: None,
        }
    }

    /// The reused buffer gives each record exactly its own encoding: a short record after a
    /// long one carries nothing of the long one's tail.
    #[test]
    fn a_reused_buffer_encodes_as_the_record_alone() {
        let mut buf = Vec::new();
        let long = decision("a-long-slot-name", 12);
        let short = decision("s", 0);
        assert_eq!(encode_into(&mut buf, &long), &long.encode()[..]);
        let cap = buf.capacity();
        assert_eq!(encode_into(&mut buf, &short), &short.encode()[..]);
        assert!(short.encode().len() < long.encode().len());
        assert_eq!(buf.capacity(), cap, "the allocation is kept");
    }
}
