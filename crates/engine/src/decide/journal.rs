//! The journal: what an evaluation changed in a user's state beyond the features, recorded so
//! that replaying the log reproduces the state exactly.
//!
//! A user's state is a pure function of their log: for each seq in order, the event (if any)
//! updates the features ([`apply_event`]), then the journal record (if any) applies its
//! [`Effect`]s. The live path makes every such change through [`apply`] as it decides, and the
//! shard writes the effects it made next to the event in the same commit; recovery replays them
//! with the same functions ([`replay`]), so a checkpoint plus the log tail past it gives the same
//! state as the process that crashed had — without re-running rules, models or random draws,
//! whose outcome may differ the second time.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::features::{FeatureConfig, Sym, UserState};
use trimtab_wire::{Event, Props};

/// One change to a user's state made by deciding (not by the features of an event).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Effect {
    /// The user's behavioural segment changed.
    Segment(String),
    /// The user's global-holdout membership was decided (first sight).
    Holdout(bool),
    /// The user met an experiment: their arm, or `None` when not eligible.
    Assigned {
        experiment: String,
        arm: Option<String>,
    },
    /// First exposure to an experiment's content.
    Exposed {
        experiment: String,
        covariate: f64,
        segment: String,
    },
    /// New value of an experiment metric for the user.
    Metric {
        experiment: String,
        metric: String,
        value: f64,
    },
    /// A decision was admitted: the slot shows it now (and it counts against the caps).
    Decided {
        slot: String,
        variant: String,
        params: BTreeMap<String, String>,
        id: String,
        experiment: Option<String>,
    },
}

/// What a journal record was written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cause {
    /// The event stored at the same seq.
    Event,
    /// A server timer tick while a hover or dwell was ongoing (expiry runs first).
    Tick,
    /// A first-paint `decide` request.
    Decide,
}

/// The journal row of one seq: when, why, and the effects in the order they were made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalRecord {
    /// Server time of the evaluation (ms).
    pub at: i64,
    pub cause: Cause,
    pub effects: Vec<Effect>,
}

impl JournalRecord {
    pub fn encode(&self) -> Vec<u8> {
        // Plain data; postcard into a Vec cannot fail.
        postcard::to_allocvec(self).expect("JournalRecord is postcard-serialisable")
    }

    pub fn decode(b: &[u8]) -> Option<JournalRecord> {
        postcard::from_bytes(b).ok()
    }
}

/// An event's own change of the state: a page view resets what the slots show, then the
/// features take the event in.
pub fn apply_event(state: &mut UserState, ev: &Event, cfg: &FeatureConfig) {
    if matches!(ev.props, Props::PageView { .. }) {
        state.new_page();
    }
    state.apply(ev, cfg);
}

/// Applies one effect made at `at`.
pub fn apply(state: &mut UserState, effect: &Effect, at: i64) {
    match effect {
        Effect::Segment(s) => state.segment = Sym::new(s),
        Effect::Holdout(h) => state.holdout = Some(*h),
        Effect::Assigned { experiment, arm } => {
            state.assign_experiment(experiment, arm.clone(), at)
        }
        Effect::Exposed {
            experiment,
            covariate,
            segment,
        } => state.expose(experiment, at, *covariate, segment),
        Effect::Metric {
            experiment,
            metric,
            value,
        } => state.set_metric(experiment, metric, *value),
        Effect::Decided {
            slot,
            variant,
            params,
            id,
            experiment,
        } => state.record_shown(slot, variant, params, id, experiment.as_deref(), at),
    }
}

/// Replays one seq of the log onto the state: its event (if any), then its journal record.
pub fn replay(
    state: &mut UserState,
    cfg: &FeatureConfig,
    seq: u64,
    event: Option<&Event>,
    journal: Option<&JournalRecord>,
) {
    if let Some(ev) = event {
        apply_event(state, ev, cfg);
    }
    if let Some(j) = journal {
        if j.cause == Cause::Tick {
            state.expire(j.at, cfg);
        }
        for e in &j.effects {
            apply(state, e, j.at);
        }
    }
    state.next_seq = state.next_seq.max(seq + 1);
}
