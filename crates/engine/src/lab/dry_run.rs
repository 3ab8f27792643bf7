//! The dry run (`POST /v1/rules/dry-run`): a rule source not yet installed, evaluated against
//! one user's current state — with each of the user's recent events as `event`, then once as
//! a timer `tick` at the current time — and nothing pushed, stored or counted anywhere live.
//! The rule runs alone, in a [`super::RuleSet`] of its own, so its counters say exactly what
//! each run did.

use std::sync::Arc;

use serde::Serialize;

use crate::decide::view::{event_view, synthetic_event, user_view, EventData};
use crate::features::UserState;
use trimtab_privacy::UserKey;
use trimtab_rules::{AdjustRequest, RuleErrorInfo, RuleInput, Rules};
use trimtab_wire::Event;

/// Recent events a dry run evaluates the rule with, at most.
pub const MAX_EVENTS: usize = 20;

/// What the rule did with one event.
#[derive(Debug, Serialize)]
pub struct Step {
    /// The event's id (`tick`: the timer, now).
    pub event: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Server time of the event (ms).
    pub ts: i64,
    /// Whether the rule ran (a rule whose `ON` leaves out this type does not).
    pub ran: bool,
    pub adjustments: Vec<AdjustRequest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<RuleErrorInfo>,
    /// Rhai operations the run took.
    pub operations: u64,
}

/// The dry run's answer.
#[derive(Debug, Serialize)]
pub struct DryRun {
    /// The user's pseudonymous key (hex).
    pub key: String,
    /// Events the user's state has taken in.
    pub user_events: u64,
    pub steps: Vec<Step>,
    /// Every `adjust()` call over the steps.
    pub adjustments: usize,
    pub errors: usize,
    pub operations: u64,
}

/// Runs `rules` (one rule, built for this) against `state` with each of `events` (oldest
/// first) and a final tick at `now`.
pub fn run(
    rules: &Rules,
    key: &UserKey,
    state: UserState,
    events: &[Arc<Event>],
    now: i64,
) -> DryRun {
    let state = Arc::new(state);
    let mut steps = Vec::new();
    let status = |r: &Rules| {
        r.statuses()
            .into_iter()
            .next()
            .map(|s| (s.runs, s.failures, s.operations, s.last_error))
    };
    let mut run_one = |event: rhai::Dynamic, kind: &'static str, id: String, target, ts| {
        let before = status(rules);
        let adjustments = rules.evaluate(&RuleInput {
            user: user_view(key, state.clone(), now),
            event,
            now_ms: now,
            kind: Some(kind),
            scorer: None,
        });
        let after = status(rules);
        let (ran, error, operations) = match (before, after) {
            (Some(b), Some(a)) => (a.0 > b.0, (a.1 > b.1).then_some(a.3).flatten(), a.2 - b.2),
            _ => (false, None, 0),
        };
        steps.push(Step {
            event: id,
            kind: kind.to_string(),
            target,
            ts,
            ran,
            adjustments,
            error,
            operations,
        });
    };
    for ev in events {
        run_one(
            event_view(EventData::Real(ev.clone())),
            ev.kind().as_str(),
            ev.id.clone(),
            ev.target.clone(),
            ev.received_ms,
        );
    }
    run_one(
        synthetic_event("tick", &state.session, now, rhai::Map::new()),
        "tick",
        "tick".into(),
        None,
        now,
    );
    DryRun {
        key: key.hex(),
        user_events: state.events,
        adjustments: steps.iter().map(|s| s.adjustments.len()).sum(),
        errors: steps.iter().filter(|s| s.error.is_some()).count(),
        operations: steps.iter().map(|s| s.operations).sum(),
        steps,
    }
}
