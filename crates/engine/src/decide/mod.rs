//! Decisions as pure code: one function, [`step`], takes a user's state, one input (an event,
//! a timer tick or a first-paint `decide` request), a [`Snapshot`] of the live rules,
//! experiments, bandits, segments and models, and the time, and returns through [`Out`] what
//! the step decided: the decisions to store and push, the learning records and statistic
//! deltas to commit with them, and the journal of effects it made on the state.
//!
//! Owns: the order of a step (features → attribution → assignment → experiment tracking →
//! rules → admission), admission with its precedence and frequency caps ([`admit`]), reward
//! attribution ([`attribution`]) and the journal that makes the state replayable
//! ([`journal`]). Everything that changes the state beyond the event's features goes through
//! [`journal::apply`], live and at replay alike.
//!
//! Runs on the shard thread that owns the user. Does no I/O: stored learning records come
//! through a [`LearnLookup`], the clock through `now`; only metrics counters are touched.
//! Randomness (decision ids, bandit draws) is the one thing replay does not redo: its outcome
//! is in the journal.

mod admit;
pub mod attribution;
pub mod journal;
#[cfg(test)]
mod tests;
pub mod view;

use std::sync::Arc;

pub use attribution::{LearnCache, LearnLookup, NoRecords};
pub use journal::{Cause, Effect, JournalRecord};

use crate::bandits::def::RewardKind;
use crate::bandits::record::LearnRecord;
use crate::bandits::Bandits;
use crate::config::DeliveryConfig;
use crate::experiments::{Experiments, StatDelta};
use crate::features::{FeatureConfig, UserState};
use crate::metrics::Metrics;
use crate::pipeline::Decision;
use crate::segments::service::SegmentService;
use trimtab_learn::serving::Models;
use trimtab_privacy::UserKey;
use trimtab_rules::{AdjustRequest, RuleInput, Rules, Scorer};
use trimtab_wire::Event;

/// What a step reads besides the user: the live services (each an `ArcSwap` snapshot inside)
/// and the config. Cheap to build: references only.
pub struct Snapshot<'a> {
    pub features: &'a FeatureConfig,
    pub delivery: &'a DeliveryConfig,
    pub rules: &'a Rules,
    pub experiments: &'a Experiments,
    pub bandits: &'a Bandits,
    /// Behavioural segments (None: users keep their segment).
    pub segments: Option<&'a SegmentService>,
    pub models: &'a Arc<Models>,
    pub metrics: &'a Arc<Metrics>,
}

/// One input of a step.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// A new (not duplicate) event of the user (shared with the rules' view of it).
    Event(&'a Arc<Event>),
    /// The server timer while a hover or dwell is ongoing.
    Tick,
    /// A first-paint decision for `slot` (among `candidates`, if any).
    Decide {
        slot: &'a str,
        candidates: &'a [String],
    },
}

/// Something the caller must pass on after the step (the learner's messages).
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    /// A bandit decision was made.
    Chosen { id: [u8; 16], rec: Box<LearnRecord> },
    /// An outcome was attributed to bandit decision `id`.
    Reward {
        id: [u8; 16],
        slot: String,
        kind: RewardKind,
    },
}

/// Everything one step decided (the in-memory sink of a step; the shard turns it into rows).
#[derive(Debug, Default)]
pub struct Out {
    /// The journal: every change made to the state beyond the event's features, in order.
    pub effects: Vec<Effect>,
    /// Tick only: whether expiry ended an interaction (the state changed even without effects).
    pub expired: bool,
    /// Decisions admitted, in order (to store; pushed unless the input was `decide`).
    pub decisions: Vec<Decision>,
    /// Learning records created or updated (to store).
    pub learn: Vec<([u8; 16], LearnRecord)>,
    /// Experiment statistic deltas (to add in the same commit).
    pub stats: Vec<StatDelta>,
    /// For the learner.
    pub notes: Vec<Note>,
    /// The answer to a `decide` request: the new decision, what the slot already shows, or
    /// the page default.
    pub answer: Option<Decision>,
}

impl Out {
    /// Whether the state changed beyond the features of an event.
    pub fn changed_state(&self) -> bool {
        self.expired || !self.effects.is_empty()
    }
}

/// Applies `effect` to the state and journals it.
pub(crate) fn emit(state: &mut UserState, out: &mut Out, effect: Effect, at: i64) {
    journal::apply(state, &effect, at);
    out.effects.push(effect);
}

/// Runs one input through the loop for one user. See the module doc.
#[allow(clippy::too_many_arguments)]
pub fn step(
    snap: &Snapshot<'_>,
    user: &UserKey,
    state: &mut UserState,
    cache: &mut LearnCache,
    lookup: &mut dyn LearnLookup,
    input: Input<'_>,
    now: i64,
    out: &mut Out,
) {
    match input {
        Input::Event(ev) => {
            let events_before = state.events;
            if let trimtab_wire::Props::Signal(s) = &ev.props {
                snap.metrics
                    .signals
                    .with_label_values(&[s.kind.as_str()])
                    .inc();
            }
            journal::apply_event(state, ev, snap.features);
            attribution::outcomes(snap, state, cache, lookup, ev, now, out);
            let personal = state.consent.personalization;
            if personal {
                if matches!(ev.props, trimtab_wire::Props::PageView { .. })
                    || state.segment.is_empty()
                {
                    assign_segment(snap, state, now, out);
                }
                prepare(snap, user, state, now, out);
            }
            track(snap, state, ev, events_before, now, out);
            if personal {
                let event = || view::event_view(view::EventData::Real(ev.clone()));
                for r in evaluate(snap, user, state, ev.kind().as_str(), event, now) {
                    if let Some(d) =
                        admit::admit(snap, user, state, cache, r, Some(&ev.id), now, out)
                    {
                        out.decisions.push(d);
                    }
                }
            }
        }
        Input::Tick => {
            out.expired = state.expire(now, snap.features);
            if state.consent.personalization && state.visible {
                prepare(snap, user, state, now, out);
                let session = state.session.clone();
                let event = || view::synthetic_event("tick", &session, now, rhai::Map::new());
                for r in evaluate(snap, user, state, "tick", event, now) {
                    if let Some(d) = admit::admit(snap, user, state, cache, r, None, now, out) {
                        out.decisions.push(d);
                    }
                }
            }
        }
        Input::Decide { slot, candidates } => {
            out.answer = Some(decide(snap, user, state, cache, slot, candidates, now, out));
        }
    }
}

/// A first-paint decision (see [`Out::answer`]).
#[allow(clippy::too_many_arguments)]
fn decide(
    snap: &Snapshot<'_>,
    user: &UserKey,
    state: &mut UserState,
    cache: &mut LearnCache,
    slot: &str,
    candidates: &[String],
    now: i64,
    out: &mut Out,
) -> Decision {
    let fits = |v: &str| candidates.is_empty() || candidates.iter().any(|c| c == v);
    let default = |state: &UserState| Decision {
        id: Decision::new_id().1,
        slot: slot.to_string(),
        variant: candidates
            .first()
            .cloned()
            .unwrap_or_else(|| "default".into()),
        params: Default::default(),
        source: "default".into(),
        rule: None,
        experiment: None,
        arm: None,
        propensity: 1.0,
        ts: now,
        session: state.session.clone(),
        trigger: None,
    };
    if !state.consent.personalization {
        return default(state);
    }
    assign_segment(snap, state, now, out);
    prepare(snap, user, state, now, out);
    let session = state.session.clone();
    let event = || {
        let mut props = rhai::Map::new();
        props.insert("slot".into(), slot.to_string().into());
        let cands: rhai::Array = candidates.iter().map(|c| c.clone().into()).collect();
        props.insert("candidates".into(), cands.into());
        view::synthetic_event("decide", &session, now, props)
    };
    let chosen = evaluate(snap, user, state, "decide", event, now)
        .into_iter()
        .find(|r| r.slot == slot && fits(&r.variant))
        // No rule, but an experiment or a bandit on this slot: first-paint A/B testing or a
        // bandit's first-paint choice.
        .or_else(|| {
            (snap.experiments.override_for(state, slot, now).is_some() || snap.bandits.covers(slot))
                .then(|| AdjustRequest {
                    rule: String::new(),
                    slot: slot.to_string(),
                    variant: String::new(),
                    params: Default::default(),
                })
        });
    if let Some(d) = chosen.and_then(|r| admit::admit(snap, user, state, cache, r, None, now, out))
    {
        out.decisions.push(d.clone());
        return d;
    }
    // Nothing new: what the slot already shows (pushed earlier on this page), else the default.
    let current = state.adjustments.get(slot).and_then(|v| {
        let (id, params) = state.shown.get(slot)?;
        fits(v).then(|| Decision {
            id: id.clone(),
            slot: slot.to_string(),
            variant: v.to_string(),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            source: "current".into(),
            rule: None,
            experiment: None,
            arm: None,
            propensity: 1.0,
            ts: now,
            session: state.session.clone(),
            trigger: None,
        })
    });
    current.unwrap_or_else(|| default(state))
}

/// The user's current behavioural segment: assigned at each page view, at `decide` requests
/// and while the user has none; other events keep it for the rest of the page (assigning
/// costs a feature vector and a nearest-centroid search, and segments describe behaviour over
/// visits, not within one page).
fn assign_segment(snap: &Snapshot<'_>, state: &mut UserState, now: i64, out: &mut Out) {
    if let Some(seg) = snap.segments {
        let s = seg.assign(state, now);
        if *s != *state.segment {
            emit(state, out, Effect::Segment(s), now);
        }
    }
}

/// Before rules run for a user who consented to personalization: the global holdout (first
/// sight) and the experiments they meet for the first time.
fn prepare(snap: &Snapshot<'_>, user: &UserKey, state: &mut UserState, now: i64, out: &mut Out) {
    let plan = {
        let st: &UserState = state;
        let full = || rhai::Dynamic::from_map(view::user_map(user, st, now));
        snap.experiments.plan(user, st, full, now)
    };
    if let Some(h) = plan.holdout {
        emit(state, out, Effect::Holdout(h), now);
    }
    for (experiment, arm) in plan.assign {
        emit(state, out, Effect::Assigned { experiment, arm }, now);
    }
}

/// Experiment exposures and metric values of one event.
fn track(
    snap: &Snapshot<'_>,
    state: &mut UserState,
    ev: &Event,
    events_before: u64,
    now: i64,
    out: &mut Out,
) {
    let t = snap.experiments.track(state, ev, events_before);
    for x in t.exposures {
        let e = Effect::Exposed {
            experiment: x.experiment,
            covariate: x.covariate,
            segment: x.segment,
        };
        emit(state, out, e, now);
    }
    for (experiment, metric, value) in t.values {
        let e = Effect::Metric {
            experiment,
            metric,
            value,
        };
        emit(state, out, e, now);
    }
    out.stats.extend(t.deltas);
}

/// Runs the rules on the user's current state; `event` builds the `event` view (only called
/// when there are rules). The state is lent to the rules' view for the evaluation (swapped
/// into a reused `Arc` and back: no copy) and the context vector is computed only if a rule
/// calls `predict()`.
fn evaluate(
    snap: &Snapshot<'_>,
    user: &UserKey,
    state: &mut UserState,
    kind: &'static str,
    event: impl FnOnce() -> rhai::Dynamic,
    now: i64,
) -> Vec<AdjustRequest> {
    if snap.rules.is_empty() {
        return Vec::new();
    }
    // The state is swapped into an `Arc` kept for the next evaluation on this thread, and
    // back: no allocation, and no default state built and dropped per evaluation. What the
    // spare holds between evaluations is that default state, never a user's.
    thread_local! {
        static SPARE: std::cell::RefCell<Option<Arc<UserState>>> =
            const { std::cell::RefCell::new(None) };
    }
    let mut shared = SPARE
        .with(|s| s.borrow_mut().take())
        .unwrap_or_else(|| Arc::new(UserState::default()));
    std::mem::swap(
        Arc::get_mut(&mut shared).expect("the spare is unshared"),
        state,
    );
    let input = RuleInput {
        user: view::user_view(user, shared.clone(), now),
        event: event(),
        now_ms: now,
        kind: Some(kind),
        scorer: scorer(snap, &shared, now),
    };
    let out = snap.rules.evaluate(&input);
    drop(input);
    // Nothing else holds the state once the rules are done (a copy only if a script kept one).
    match Arc::get_mut(&mut shared) {
        Some(lent) => {
            std::mem::swap(lent, state);
            SPARE.with(|s| *s.borrow_mut() = Some(shared));
        }
        None => *state = (*shared).clone(),
    }
    out
}

/// `predict()` for one rule evaluation: the served models applied to the user's current
/// context vector, computed on the first call (None when no model is served, so the common
/// case costs nothing).
fn scorer(snap: &Snapshot<'_>, state: &Arc<UserState>, now: i64) -> Option<Scorer> {
    if snap.models.is_empty() {
        return None;
    }
    let state = state.clone();
    let x = std::sync::OnceLock::new();
    let models = snap.models.clone();
    let metrics = snap.metrics.clone();
    Some(Scorer(Arc::new(move |kind, slot, variant| {
        let name = Models::name(kind, slot);
        let x = x.get_or_init(|| crate::features::context::of_state(&state, now));
        let p = models.get(&name).and_then(|m| m.predict(x, variant));
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
