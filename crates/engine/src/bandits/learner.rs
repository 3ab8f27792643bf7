//! The learner thread: the only owner of the bandits' mutable policies.
//!
//! It receives every bandit decision (`Chosen`, with context and action) and every outcome
//! attributed to one (`Outcome`, from the shards), joins them by decision id within the
//! decision's attribution window, updates the slot's policy (a reward at once; reward 0 when
//! the window closes without one), keeps the per-arm and per-group counters, trips the
//! guardrail, and publishes restored policy snapshots to the shards (at most every
//! [`PUBLISH_EVERY_MS`], lock-free for readers). On start, and whenever a slot's definition
//! changes, it rebuilds the slot by replaying the stored log (`learnlog`), so restarts resume
//! the policy instead of forgetting it.
//!
//! Messages are best effort: the channel is bounded and a shard never blocks on it; a
//! dropped message costs one online update, never data (the record is stored by the writer
//! and the next replay sees it).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};

use super::def::{BanditDef, RewardKind};
use super::record::{Group, LearnRecord};
use super::{ArmStats, Bandits, LiveSlot, SlotStats};
use crate::features::context::CONTEXT_DIM;
use crate::metrics::Metrics;
use trimtab_learn::bandit::{new_policy, one_hot, Policy};
use trimtab_store::Store;
use trimtab_util::now_ms;

/// Longest delay between an update and its publication to the shards.
pub const PUBLISH_EVERY_MS: i64 = 50;
/// Capacity of the learner's queue.
pub const QUEUE: usize = 65_536;

pub enum LearnMsg {
    /// A bandit decision was made (sent by the shard that made it).
    Chosen { id: [u8; 16], rec: Box<LearnRecord> },
    /// An outcome was attributed to decision `id`.
    Outcome {
        id: [u8; 16],
        slot: String,
        kind: RewardKind,
    },
    /// The definitions changed; the sender (if any) is told once the new state is published.
    Reload(Option<Sender<()>>),
}

struct Pending {
    slot: String,
    ts: i64,
    context: Vec<f32>,
    action: usize,
    group: Group,
    rewarded: bool,
    outcomes: [bool; 3],
}

impl Pending {
    /// A decision as logged, with no outcome seen yet.
    fn of(rec: &LearnRecord) -> Pending {
        Pending {
            slot: rec.slot.clone(),
            ts: rec.ts,
            context: rec.context.clone(),
            action: rec.action as usize,
            group: rec.group,
            rewarded: false,
            outcomes: [false; 3],
        }
    }
}

struct SlotLearner {
    def: Arc<BanditDef>,
    policy: Box<dyn Policy>,
    stats: SlotStats,
    fallback: Option<String>,
    published: Option<Arc<LiveSlot>>,
}

impl SlotLearner {
    fn new(def: Arc<BanditDef>) -> Result<SlotLearner, String> {
        let policy = new_policy(def.policy, CONTEXT_DIM, def.candidates.len(), &def.params)
            .map_err(|e| e.to_string())?;
        let k = def.candidates.len();
        Ok(SlotLearner {
            stats: SlotStats {
                arms: vec![ArmStats::default(); k],
                ..SlotStats::default()
            },
            def,
            policy,
            fallback: None,
            published: None,
        })
    }

    fn update(&mut self, ctx: &[f32], action: usize, reward: f64, metrics: &Metrics) {
        let acts = one_hot(self.def.candidates.len());
        // Records read from the store come in the current layout (`export::records_with_ids`
        // upgrades older ones); live records are made in it.
        if ctx.len() != CONTEXT_DIM || action >= acts.len() {
            return;
        }
        self.policy.update(ctx, &acts[action], reward);
        self.stats.updates += 1;
        metrics
            .bandit_updates
            .with_label_values(&[&self.def.slot])
            .inc();
    }

    /// Counts a decision whose window closed.
    fn close(&mut self, p: &Pending) {
        let reward = self.def.reward.index();
        if let Some(a) = self.stats.arms.get_mut(p.action) {
            a.closed += 1;
            a.rewarded += u64::from(p.outcomes[reward]);
        }
        let since = self
            .def
            .guardrail
            .as_ref()
            .and_then(|g| g.since_ms)
            .unwrap_or(i64::MIN);
        if p.ts >= since {
            let g = &mut self.stats.groups[group_index(p.group)];
            g.decisions += 1;
            for (o, &hit) in g.outcomes.iter_mut().zip(&p.outcomes) {
                *o += u64::from(hit);
            }
        }
    }

    /// Trips the guardrail when the bandit group's rate of the guarded metric is below the
    /// holdout's by more than `max_drop` (relative) and a one-sided two-proportion z-test
    /// rejects "not lower" at `alpha`.
    fn check_guardrail(&mut self) -> bool {
        let Some(g) = &self.def.guardrail else {
            return false;
        };
        if self.fallback.is_some() {
            return false;
        }
        let (b, h) = (self.stats.groups[0], self.stats.groups[1]);
        if b.decisions < g.min_samples || h.decisions < g.min_samples {
            return false;
        }
        let k = g.metric.index();
        let (xb, nb) = (b.outcomes[k] as f64, b.decisions as f64);
        let (xh, nh) = (h.outcomes[k] as f64, h.decisions as f64);
        let (pb, ph) = (xb / nb, xh / nh);
        if ph <= 0.0 || pb >= ph * (1.0 - g.max_drop) {
            return false;
        }
        let pool = (xb + xh) / (nb + nh);
        let se = (pool * (1.0 - pool) * (1.0 / nb + 1.0 / nh)).sqrt();
        if se <= 0.0 {
            return false;
        }
        let z = (pb - ph) / se;
        let p = 0.5 * statrs::function::erf::erfc(-z / std::f64::consts::SQRT_2);
        if p < g.alpha {
            self.fallback = Some(format!(
                "guardrail `{}`: {:.2}% with the bandit vs {:.2}% in the holdout over {} / {} decisions (drop {:.0}% > {:.0}%, one-sided p = {:.4} < {})",
                g.metric.as_str(),
                100.0 * pb,
                100.0 * ph,
                b.decisions,
                h.decisions,
                100.0 * (1.0 - pb / ph),
                100.0 * g.max_drop,
                p,
                g.alpha
            ));
            return true;
        }
        false
    }
}

fn group_index(g: Group) -> usize {
    match g {
        Group::Bandit => 0,
        Group::Holdout => 1,
        Group::Fallback => 2,
    }
}

pub struct Learner {
    bandits: Bandits,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    rx: Receiver<LearnMsg>,
    slots: HashMap<String, SlotLearner>,
    pending: HashMap<[u8; 16], Pending>,
    deadlines: BinaryHeap<Reverse<(i64, [u8; 16])>>,
    dirty: HashSet<String>,
    last_publish: i64,
}

/// Starts the learner: connects `bandits` to it, replays the log, and returns the thread
/// handle and a sender for shards. The thread stops when every sender is gone.
pub fn start(
    bandits: &Bandits,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    health: &Arc<crate::health::Health>,
) -> std::io::Result<(JoinHandle<()>, Sender<LearnMsg>)> {
    let (tx, rx) = bounded(QUEUE);
    bandits.connect(tx.clone());
    let mut l = Learner {
        bandits: bandits.clone(),
        store,
        metrics,
        rx,
        slots: HashMap::new(),
        pending: HashMap::new(),
        deadlines: BinaryHeap::new(),
        dirty: HashSet::new(),
        last_publish: 0,
    };
    // Replay before serving so the first decisions already use the learned policy.
    l.reload();
    l.publish(now_ms());
    let h = health.spawn("trimtab-learner", move || l.run())?;
    Ok((h, tx))
}

impl Learner {
    fn run(mut self) {
        loop {
            let now = now_ms();
            let next_deadline = self.deadlines.peek().map(|Reverse((d, _))| *d);
            let mut wait = next_deadline.map_or(3_600_000, |d| (d - now).max(0));
            if !self.dirty.is_empty() {
                wait = wait.min((self.last_publish + PUBLISH_EVERY_MS - now).max(0));
            }
            match self.rx.recv_timeout(Duration::from_millis(wait as u64)) {
                Ok(msg) => {
                    self.handle(msg);
                    // Drain what is queued before publishing.
                    while let Ok(m) = self.rx.try_recv() {
                        self.handle(m);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = now_ms();
            self.expire(now);
            if !self.dirty.is_empty() && now - self.last_publish >= PUBLISH_EVERY_MS {
                self.publish(now);
            }
        }
        tracing::debug!("learner stopped");
    }

    fn handle(&mut self, msg: LearnMsg) {
        match msg {
            LearnMsg::Chosen { id, rec } => self.chosen(id, &rec),
            LearnMsg::Outcome { id, slot, kind } => self.outcome(id, &slot, kind),
            LearnMsg::Reload(done) => {
                self.reload();
                self.publish(now_ms());
                if let Some(d) = done {
                    let _ = d.send(());
                }
            }
        }
    }

    fn chosen(&mut self, id: [u8; 16], rec: &LearnRecord) {
        let Some(s) = self.slots.get_mut(&rec.slot) else {
            return;
        };
        if rec.candidates != s.def.candidates {
            return; // decided under an older definition
        }
        if let Some(a) = s.stats.arms.get_mut(rec.action as usize) {
            a.chosen += 1;
        }
        s.stats.pending += 1;
        self.deadlines
            .push(Reverse((rec.ts + rec.window_ms.max(0), id)));
        self.pending.insert(id, Pending::of(rec));
        self.dirty.insert(rec.slot.clone());
        // Outcomes already recorded (replay of an open decision).
        for kind in RewardKind::ALL {
            if rec.has(kind) {
                self.outcome(id, &rec.slot, kind);
            }
        }
    }

    fn outcome(&mut self, id: [u8; 16], slot: &str, kind: RewardKind) {
        let Some(p) = self.pending.get_mut(&id) else {
            return;
        };
        if p.slot != slot || p.outcomes[kind.index()] {
            return;
        }
        p.outcomes[kind.index()] = true;
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        if kind == s.def.reward && !p.rewarded {
            p.rewarded = true;
            let (ctx, a) = (p.context.clone(), p.action);
            s.update(&ctx, a, 1.0, &self.metrics);
            self.dirty.insert(slot.to_string());
        }
    }

    /// Closes every decision whose window ended: reward 0 if none came, counters, guardrail.
    fn expire(&mut self, now: i64) {
        while let Some(Reverse((due, id))) = self.deadlines.peek().copied() {
            if due > now {
                break;
            }
            self.deadlines.pop();
            let Some(p) = self.pending.remove(&id) else {
                continue;
            };
            let Some(s) = self.slots.get_mut(&p.slot) else {
                continue;
            };
            s.stats.pending = s.stats.pending.saturating_sub(1);
            if !p.rewarded {
                s.update(&p.context, p.action, 0.0, &self.metrics);
            }
            s.close(&p);
            if s.check_guardrail() {
                tracing::warn!(slot = %p.slot, reason = ?s.fallback, "bandit falls back to its control");
            }
            self.dirty.insert(p.slot.clone());
        }
    }

    /// Brings the slots in line with the definitions, rebuilding changed ones from the log.
    fn reload(&mut self) {
        let defs = self.bandits.defs();
        self.slots.retain(|slot, _| defs.contains_key(slot));
        self.pending.retain(|_, p| defs.contains_key(&p.slot));
        for (slot, def) in defs.iter() {
            let unchanged = self.slots.get(slot).is_some_and(|s| *s.def == **def);
            if unchanged {
                continue;
            }
            match self.rebuild(def.clone()) {
                Ok(n) => {
                    tracing::info!(slot = %slot, replayed = n, policy = %def.policy, "bandit ready")
                }
                Err(e) => tracing::error!(slot = %slot, "bandit not started: {e}"),
            }
        }
        self.dirty.extend(defs.keys().cloned());
    }

    /// A fresh policy for `def`, trained by replaying the slot's stored decisions (those made
    /// with the same candidates) in time order.
    fn rebuild(&mut self, def: Arc<BanditDef>) -> Result<usize, String> {
        let slot = def.slot.clone();
        self.pending.retain(|_, p| p.slot != slot);
        let mut s = SlotLearner::new(def.clone())?;
        let recs: Vec<([u8; 16], LearnRecord)> =
            super::export::records_with_ids(&self.store, &slot)
                .map_err(|e| e.to_string())?
                .into_iter()
                .filter(|(_, r)| r.candidates == def.candidates)
                .collect();
        let now = now_ms();
        let n = recs.len();
        let mut open = Vec::new();
        for (id, r) in recs {
            if !r.closed(now) {
                open.push((id, r)); // counted and joined by `chosen()` below
                continue;
            }
            if let Some(a) = s.stats.arms.get_mut(r.action as usize) {
                a.chosen += 1;
            }
            let p = Pending {
                rewarded: r.has(r.reward),
                outcomes: RewardKind::ALL.map(|k| r.has(k)),
                ..Pending::of(&r)
            };
            s.update(&r.context, p.action, r.reward_value(), &self.metrics);
            s.close(&p);
            s.check_guardrail();
        }
        self.metrics
            .bandit_fallback
            .with_label_values(&[&slot])
            .set(i64::from(s.fallback.is_some()));
        self.slots.insert(slot.clone(), s);
        for (id, r) in open {
            self.chosen(id, &r);
        }
        Ok(n)
    }

    fn publish(&mut self, now: i64) {
        let mut out = HashMap::new();
        for (slot, s) in self.slots.iter_mut() {
            if self.dirty.contains(slot) || s.published.is_none() {
                let policy = match s.policy.snapshot().restore() {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::error!(slot = %slot, "cannot publish the policy: {e}");
                        match &s.published {
                            Some(p) => {
                                out.insert(slot.clone(), p.clone());
                                continue;
                            }
                            None => match new_policy(
                                s.def.policy,
                                CONTEXT_DIM,
                                s.def.candidates.len(),
                                &s.def.params,
                            ) {
                                Ok(p) => p,
                                Err(_) => continue,
                            },
                        }
                    }
                };
                self.metrics
                    .bandit_fallback
                    .with_label_values(&[slot])
                    .set(i64::from(s.fallback.is_some()));
                s.published = Some(Arc::new(LiveSlot {
                    def: s.def.clone(),
                    policy,
                    version: s.stats.updates,
                    fallback: s.fallback.clone(),
                    stats: s.stats.clone(),
                }));
            }
            if let Some(p) = &s.published {
                out.insert(slot.clone(), p.clone());
            }
        }
        self.bandits.publish(out);
        self.dirty.clear();
        self.last_publish = now;
    }
}
