//! A shard worker: one thread that owns the state of the users hashed to it.
//!
//! Per message it loads the user (memory, else redb), drops duplicate event ids, updates the
//! features, runs the rules, applies frequency caps, builds decisions and hands one batch to the
//! writer. It also keeps a timer per user with an ongoing hover or dwell, so rules see
//! `hovering_ms` grow on the server's clock and fire at the right moment between heartbeats.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{select, Receiver, Sender};

use super::attribution::{Attribution, LearnCache};
use super::writer::{Done, WriterMsg};
use super::{Decision, IngestOutcome, PipelineError, ShardMsg};
use crate::bandits::learner::LearnMsg;
use crate::bandits::Bandits;
use crate::config::Config;
use crate::delivery::Hub;
use crate::event::Event;
use crate::experiments::Experiments;
use crate::features::view::{event_map, synthetic_event, user_map};
use crate::features::UserState;
use crate::metrics::Metrics;
use crate::privacy::{Pseudonymizer, UserKey};
use crate::rules::{AdjustRequest, RuleInput, Rules, Scorer};
use crate::segments::service::SegmentService;
use crate::store::{Mutation, Store};

pub(crate) use crate::now_ms;

struct Entry {
    state: UserState,
    /// Recent learning records of bandit decisions (newest version).
    learn: LearnCache,
    /// Id hashes of events handed to the writer and not yet known to be committed → op.
    pending: HashMap<[u8; 16], u64>,
    last_op: u64,
    last_used: i64,
    timer: Option<i64>,
}

pub(crate) struct ShardParts {
    pub idx: usize,
    pub rx: Receiver<ShardMsg>,
    pub failed: Receiver<UserKey>,
    pub writer: Sender<WriterMsg>,
    pub store: Arc<Store>,
    pub rules: Rules,
    pub cfg: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub pseudo: Pseudonymizer,
    pub committed: Arc<Vec<AtomicU64>>,
    pub hub: Arc<Hub>,
    pub live: Live,
}

pub(crate) struct Shard {
    p: ShardParts,
    users: HashMap<UserKey, Entry>,
    timers: BinaryHeap<Reverse<(i64, UserKey)>>,
    op: u64,
}

impl Shard {
    pub(crate) fn new(p: ShardParts) -> Shard {
        Shard {
            p,
            users: HashMap::new(),
            timers: BinaryHeap::new(),
            op: 0,
        }
    }

    pub(crate) fn run(mut self) {
        loop {
            let wait = match self.timers.peek() {
                Some(Reverse((due, _))) => Duration::from_millis((due - now_ms()).max(0) as u64),
                None => Duration::from_secs(3600),
            };
            select! {
                recv(self.p.rx) -> msg => match msg {
                    Ok(m) => self.handle(m),
                    Err(_) => break, // all senders gone: shutdown; queue drained
                },
                recv(self.p.failed) -> u => if let Ok(u) = u {
                    self.users.remove(&u);
                },
                default(wait) => {}
            }
            self.fire_timers();
        }
        tracing::debug!(shard = self.p.idx, "shard drained and stopped");
    }

    fn committed(&self) -> u64 {
        self.p.committed[self.p.idx].load(Ordering::Acquire)
    }

    fn load(&mut self, user: &UserKey, now: i64) -> Result<&mut Entry, PipelineError> {
        if !self.users.contains_key(user) {
            self.evict_if_full();
            let state = self
                .p
                .store
                .load_state(user)
                .map_err(|e| PipelineError::Storage(e.to_string()))?
                .and_then(|b| UserState::decode(&b))
                .unwrap_or_default();
            self.users.insert(
                *user,
                Entry {
                    state,
                    learn: LearnCache::default(),
                    pending: HashMap::new(),
                    last_op: 0,
                    last_used: now,
                    timer: None,
                },
            );
            self.p.metrics.users_cached.inc();
        }
        // Just inserted or present: cannot be missing.
        let e = self.users.get_mut(user).expect("entry present");
        e.last_used = now;
        Ok(e)
    }

    /// Drops the least recently used tenth of the cache, skipping users with uncommitted
    /// writes or running timers (their state exists only here).
    fn evict_if_full(&mut self) {
        let cap = self.p.cfg.pipeline.user_cache.max(1);
        if self.users.len() < cap {
            return;
        }
        let committed = self.committed();
        let mut idle: Vec<(i64, UserKey)> = self
            .users
            .iter()
            .filter(|(_, e)| e.last_op <= committed && e.timer.is_none())
            .map(|(k, e)| (e.last_used, *k))
            .collect();
        idle.sort_unstable();
        for (_, k) in idle.into_iter().take(cap / 10 + 1) {
            self.users.remove(&k);
            self.p.metrics.users_cached.dec();
        }
    }

    fn handle(&mut self, msg: ShardMsg) {
        match msg {
            ShardMsg::Events {
                user,
                events,
                reply,
            } => self.events(user, events, reply),
            ShardMsg::Decide {
                user,
                slot,
                candidates,
                reply,
            } => self.decide(user, slot, candidates, reply),
            ShardMsg::Export { user, reply } => {
                self.send(WriterMsg::Export { user, reply });
            }
            ShardMsg::Erase { user, reply } => {
                if self.users.remove(&user).is_some() {
                    self.p.metrics.users_cached.dec();
                }
                self.send(WriterMsg::Erase { user, reply });
            }
        }
    }

    fn send(&self, msg: WriterMsg) {
        // Blocks when the writer is behind: that backpressure fills this shard's queue, which
        // the API turns into 429s. The writer outlives every shard, so send cannot fail
        // except during a crash-stop, when the reply is dropped and the client sees an error.
        let _ = self.p.writer.send(msg);
    }

    fn events(&mut self, user: UserKey, events: Vec<Event>, reply: super::Reply<IngestOutcome>) {
        let now = now_ms();
        self.op += 1;
        let op = self.op;
        let committed = self.committed();
        let cfg = self.p.cfg.clone();
        // Which ids were committed before? One read transaction for the whole batch.
        let hashes: Vec<[u8; 16]> = events
            .iter()
            .map(|e| self.p.pseudo.event_id(&user, &e.id))
            .collect();
        let mut outcome = IngestOutcome {
            ids: events.iter().map(|e| e.id.clone()).collect(),
            ..IngestOutcome::default()
        };
        let stored_before: Vec<bool> = match self.p.store.seen_many(&user, &hashes) {
            Ok(v) => v,
            Err(e) => {
                let _ = reply.send(Err(PipelineError::Storage(e.to_string())));
                return;
            }
        };
        let rules = self.p.rules.clone();
        let metrics = self.p.metrics.clone();
        let hub = self.p.hub.clone();
        let live = self.p.live.clone();
        let exps = live.experiments.clone();
        let store = self.p.store.clone();
        let entry = match self.load(&user, now) {
            Ok(e) => e,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        entry.pending.retain(|_, o| *o > committed);
        let mut mutation = Mutation {
            user: Some(user),
            ..Mutation::default()
        };
        let mut pushes = Vec::new();
        let admit = Admit {
            cfg: &cfg,
            metrics: &metrics,
            live: &live,
            user: &user,
            now,
        };
        for ((ev, h), before) in events.iter().zip(&hashes).zip(stored_before) {
            if before || entry.pending.contains_key(h) {
                outcome.duplicates += 1;
                continue;
            }
            entry.pending.insert(*h, op);
            if matches!(ev.props, crate::event::Props::PageView { .. }) {
                // A new page renders every slot with its default again.
                entry.state.adjustments.clear();
                entry.state.shown.clear();
            }
            let events_before = entry.state.events;
            entry.state.apply(ev, &cfg.features);
            let attr = Attribution {
                store: &store,
                bandits: &live.bandits,
                learner: live.learner.as_ref(),
                metrics: &metrics,
            };
            mutation
                .learn
                .extend(attr.outcomes(&user, &entry.state, &mut entry.learn, ev, now));
            let seq = entry.state.next_seq;
            entry.state.next_seq += 1;
            mutation.events.push((seq, *h, postcard_event(ev)));
            hub.publish(|| {
                serde_json::json!({"type": "event", "ts": ev.received_ms, "user": user.hex(),
                    "event": ev.kind().as_str(), "target": ev.target, "session": ev.session, "props": ev.props_json(),
                    "page": entry.state.page})
                .to_string()
            });
            outcome.accepted += 1;
            let view = entry
                .state
                .consent
                .personalization
                .then(|| view_for_rules(&live, &user, &mut entry.state, now));
            mutation.stats.extend(
                exps.track(&mut entry.state, ev, events_before)
                    .into_iter()
                    .map(|d| d.into_stat()),
            );
            if let Some(view) = view {
                let input = RuleInput {
                    user: view,
                    event: event_map(ev),
                    now_ms: now,
                    scorer: scorer(&live, &metrics, &entry.state),
                };
                let reqs = rules.evaluate(&input);
                for r in reqs {
                    if let Some(d) = admit.admit(
                        &mut entry.state,
                        &mut entry.learn,
                        &mut mutation.learn,
                        r,
                        Some(&ev.id),
                    ) {
                        mutation.decisions.push((id_of(&d), d.encode()));
                        pushes.push(d);
                    }
                }
            }
        }
        metrics.events_duplicate.inc_by(outcome.duplicates as u64);
        entry.last_op = op;
        let has_ongoing = entry.state.has_ongoing();
        if outcome.accepted > 0 {
            mutation.state = Some(entry.state.encode());
        }
        if has_ongoing {
            self.schedule(user, now + cfg.features.tick_ms);
        }
        let done: Done = Box::new(move |r| {
            let _ = reply.send(r.map(|()| outcome));
        });
        // Even an all-duplicate batch goes through the writer: its ack then follows the commit
        // of the original events if they are still in flight.
        self.send(WriterMsg::Commit {
            shard: self.p.idx,
            op,
            mutation,
            pushes,
            done: Some(done),
        });
    }

    fn decide(
        &mut self,
        user: UserKey,
        slot: String,
        candidates: Vec<String>,
        reply: super::Reply<Decision>,
    ) {
        let now = now_ms();
        let cfg = self.p.cfg.clone();
        let rules = self.p.rules.clone();
        let metrics = self.p.metrics.clone();
        let live = self.p.live.clone();
        let exps = live.experiments.clone();
        self.op += 1;
        let op = self.op;
        let entry = match self.load(&user, now) {
            Ok(e) => e,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let session = entry.state.session.clone();
        let (d_slot, d_variant) = (
            slot.clone(),
            candidates
                .first()
                .cloned()
                .unwrap_or_else(|| "default".into()),
        );
        let default = move || Decision {
            id: Decision::new_id().1,
            slot: d_slot,
            variant: d_variant,
            params: Default::default(),
            source: "default".into(),
            rule: None,
            experiment: None,
            arm: None,
            propensity: 1.0,
            ts: now,
            session,
            trigger: None,
        };
        if !entry.state.consent.personalization {
            let _ = reply.send(Ok(default()));
            return;
        }
        let mut props = rhai::Map::new();
        props.insert("slot".into(), slot.clone().into());
        let cands: rhai::Array = candidates.iter().map(|c| c.clone().into()).collect();
        props.insert("candidates".into(), cands.into());
        let input = RuleInput {
            user: view_for_rules(&live, &user, &mut entry.state, now),
            event: synthetic_event("decide", &entry.state.session, now, props),
            now_ms: now,
            scorer: scorer(&live, &metrics, &entry.state),
        };
        let chosen = rules
            .evaluate(&input)
            .into_iter()
            .find(|r| r.slot == slot && (candidates.is_empty() || candidates.contains(&r.variant)))
            // No rule, but an experiment or a bandit on this slot: first-paint A/B testing or
            // a bandit's first-paint choice.
            .or_else(|| {
                (exps.override_for(&entry.state, &slot, now).is_some()
                    || live.bandits.covers(&slot))
                .then(|| AdjustRequest {
                    rule: String::new(),
                    slot: slot.clone(),
                    variant: String::new(),
                    params: Default::default(),
                })
            });
        let ctx = Admit {
            cfg: &cfg,
            metrics: &metrics,
            live: &live,
            user: &user,
            now,
        };
        let mut learn = Vec::new();
        let Some(d) =
            chosen.and_then(|r| ctx.admit(&mut entry.state, &mut entry.learn, &mut learn, r, None))
        else {
            // Nothing new: what the slot already shows (pushed earlier on this page), else the
            // page default.
            let current = entry.state.adjustments.get(&slot).and_then(|v| {
                let (id, params) = entry.state.shown.get(&slot)?;
                (candidates.is_empty() || candidates.contains(v)).then(|| Decision {
                    id: id.clone(),
                    slot: slot.clone(),
                    variant: v.clone(),
                    params: params.clone(),
                    source: "current".into(),
                    rule: None,
                    experiment: None,
                    arm: None,
                    propensity: 1.0,
                    ts: now,
                    session: entry.state.session.clone(),
                    trigger: None,
                })
            });
            let _ = reply.send(Ok(current.unwrap_or_else(default)));
            return;
        };
        entry.last_op = op;
        let mutation = Mutation {
            user: Some(user),
            state: Some(entry.state.encode()),
            decisions: vec![(id_of(&d), d.encode())],
            learn,
            ..Mutation::default()
        };
        let done: Done = Box::new(move |r| {
            let _ = reply.send(r.map(|()| d));
        });
        self.send(WriterMsg::Commit {
            shard: self.p.idx,
            op,
            mutation,
            pushes: Vec::new(),
            done: Some(done),
        });
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
    fn fire_timers(&mut self) {
        let now = now_ms();
        let cfg = self.p.cfg.clone();
        while let Some(Reverse((due, user))) = self.timers.peek().copied() {
            if due > now {
                break;
            }
            self.timers.pop();
            self.op += 1;
            let op = self.op;
            let rules = self.p.rules.clone();
            let metrics = self.p.metrics.clone();
            let live = self.p.live.clone();
            let Some(entry) = self.users.get_mut(&user) else {
                continue;
            };
            entry.timer = None;
            let mut changed = entry.state.expire(now, &cfg.features);
            let mut pushes = Vec::new();
            let mut decisions = Vec::new();
            let mut learn = Vec::new();
            if entry.state.consent.personalization && entry.state.visible {
                let input = RuleInput {
                    user: view_for_rules(&live, &user, &mut entry.state, now),
                    event: synthetic_event("tick", &entry.state.session, now, rhai::Map::new()),
                    now_ms: now,
                    scorer: scorer(&live, &metrics, &entry.state),
                };
                let admit = Admit {
                    cfg: &cfg,
                    metrics: &metrics,
                    live: &live,
                    user: &user,
                    now,
                };
                for r in rules.evaluate(&input) {
                    if let Some(d) =
                        admit.admit(&mut entry.state, &mut entry.learn, &mut learn, r, None)
                    {
                        decisions.push((id_of(&d), d.encode()));
                        pushes.push(d);
                        changed = true;
                    }
                }
            }
            let ongoing = entry.state.has_ongoing();
            if changed {
                entry.last_op = op;
                let mutation = Mutation {
                    user: Some(user),
                    state: Some(entry.state.encode()),
                    decisions,
                    learn,
                    ..Mutation::default()
                };
                self.send(WriterMsg::Commit {
                    shard: self.p.idx,
                    op,
                    mutation,
                    pushes,
                    done: None,
                });
            }
            if ongoing {
                self.schedule(user, now + cfg.features.tick_ms);
            }
        }
    }
}

fn id_of(d: &Decision) -> [u8; 16] {
    Decision::id_bytes(&d.id).unwrap_or([0; 16])
}

fn postcard_event(ev: &Event) -> Vec<u8> {
    // Plain data; postcard into a Vec cannot fail.
    postcard::to_allocvec(ev).expect("Event is postcard-serialisable")
}

/// The `user` map for rules, after making sure the user's experiment assignments exist
/// (with `experiments: #{id: arm}` for `experiment("id")`).
fn view_for_rules(ctx: &Live, key: &UserKey, st: &mut UserState, now: i64) -> rhai::Map {
    let exps = &ctx.experiments;
    st.segment = ctx.segments.assign(st, now);
    let mut m = user_map(key, st, now);
    exps.ensure_assigned(key, st, &m, now);
    m.insert("experiments".into(), Experiments::arms_map(st).into());
    m
}

/// `predict()` for one rule evaluation: the served models applied to the user's current
/// context vector (None when no model is served, so the common case costs nothing).
fn scorer(live: &Live, metrics: &Arc<Metrics>, state: &UserState) -> Option<Scorer> {
    if live.models.is_empty() {
        return None;
    }
    let x = crate::learn::context::of_state(state, crate::now_ms());
    let models = live.models.clone();
    let metrics = metrics.clone();
    Some(Scorer(Arc::new(move |kind, slot, variant| {
        let name = crate::learn::serving::Models::name(kind, slot);
        let p = models.get(&name).and_then(|m| m.predict(&x, variant));
        metrics
            .model_predictions
            .with_label_values(&[
                name.as_str(),
                if p.is_some() { "scored" } else { "no_model" },
            ])
            .inc();
        p
    })))
}

/// The shared, live-updated services a shard consults per event.
#[derive(Clone)]
pub(crate) struct Live {
    pub experiments: Experiments,
    pub segments: Arc<SegmentService>,
    pub bandits: Bandits,
    /// Served models, for `predict()` in rules.
    pub models: Arc<crate::learn::serving::Models>,
    /// The learner's queue (None when learning is off, e.g. in unit tests).
    pub learner: Option<Sender<LearnMsg>>,
}

/// What admitting an adjustment request needs.
struct Admit<'a> {
    cfg: &'a Config,
    metrics: &'a Metrics,
    live: &'a Live,
    user: &'a UserKey,
    now: i64,
}

impl Admit<'_> {
    /// Turns a rule's request into a decision, or `None`: users in the global holdout get no
    /// adjustment; a live experiment on the slot decides the variant (the user's arm); else a
    /// bandit on the slot decides it (once per page view; its learning record goes to `learn`
    /// and the learner); a request for the variant already showing is a no-op; frequency caps
    /// apply. On success the state records what the slot shows.
    fn admit(
        &self,
        state: &mut UserState,
        cache: &mut LearnCache,
        learn: &mut Vec<([u8; 16], Vec<u8>)>,
        r: AdjustRequest,
        trigger: Option<&str>,
    ) -> Option<Decision> {
        if state.holdout == Some(true) {
            return None;
        }
        let mut bandit = None;
        let (experiment, arm, propensity, variant, params) =
            match self.live.experiments.override_for(state, &r.slot, self.now) {
                Some(o) => {
                    let mut params = r.params;
                    params.extend(o.params);
                    (
                        Some(o.experiment),
                        Some(o.arm),
                        o.propensity,
                        o.variant,
                        params,
                    )
                }
                None if self.live.bandits.covers(&r.slot) => {
                    if state.adjustments.contains_key(&r.slot) {
                        return None; // decided on this page already: keep it stable
                    }
                    let x = crate::learn::context::of_state(state, self.now);
                    let c = self.live.bandits.choose(&r.slot, self.user, &x, self.now)?;
                    let out = (None, None, c.propensity, c.variant.clone(), r.params);
                    bandit = Some(c);
                    out
                }
                None => (None, None, 1.0, r.variant, r.params),
            };
        if state.adjustments.get(&r.slot) == Some(&variant)
            && state.shown.get(&r.slot).is_some_and(|(_, p)| *p == params)
        {
            return None; // already showing exactly this: nothing to change
        }
        let (per_session, per_day) = self.cfg.delivery.caps(&r.slot);
        let day = self.now.div_euclid(86_400_000);
        let c = state.caps.entry(r.slot.clone()).or_default();
        if c.session != state.session {
            c.session = state.session.clone();
            c.in_session = 0;
        }
        if c.day != day {
            c.day = day;
            c.in_day = 0;
        }
        if (per_session > 0 && c.in_session >= per_session) || (per_day > 0 && c.in_day >= per_day)
        {
            self.metrics
                .adjustments_capped
                .with_label_values(&[&r.slot])
                .inc();
            return None;
        }
        c.in_session += 1;
        c.in_day += 1;
        c.total += 1;
        state.adjustments.insert(r.slot.clone(), variant.clone());
        let id = Decision::new_id().1;
        state
            .shown
            .insert(r.slot.clone(), (id.clone(), params.clone()));
        if let Some(e) = &experiment {
            Experiments::note_decision(state, e, &id);
        }
        let source = if let Some(c) = bandit {
            let idb = Decision::id_bytes(&id).unwrap_or([0; 16]);
            self.metrics
                .bandit_decisions
                .with_label_values(&[&r.slot, c.group.as_str(), &variant])
                .inc();
            learn.push((idb, c.record.encode()));
            if let Some(tx) = &self.live.learner {
                let _ = tx.try_send(LearnMsg::Chosen {
                    id: idb,
                    rec: Box::new(c.record.clone()),
                });
            }
            cache.insert(idb, c.record, self.now);
            "bandit"
        } else if r.rule.is_empty() {
            "experiment"
        } else {
            "rule"
        };
        Some(Decision {
            id,
            slot: r.slot,
            variant,
            params,
            source: source.into(),
            rule: (!r.rule.is_empty()).then_some(r.rule),
            experiment,
            arm,
            propensity,
            ts: self.now,
            session: state.session.clone(),
            trigger: trigger.map(str::to_string),
        })
    }
}
