//! Admission: turning a rule's request for a slot into a decision, or into nothing.
//!
//! Precedence, in order:
//! 1. a user in the **global holdout** gets no adjustment at all;
//! 2. a live **experiment** covering the slot, in which the user has an arm, imposes the arm's
//!    variant (its params override the rule's);
//! 3. else a **bandit** deciding the slot chooses the variant, once per page view (a second
//!    request on the same page is refused so the choice stays stable);
//! 4. else the **rule**'s own variant.
//!
//! Then: a request for exactly what the slot already shows (variant and params) is a no-op;
//! **frequency caps** (per slot, per session and per UTC day) refuse the rest. An admitted
//! decision becomes an [`Effect::Decided`] applied to the state.

use super::journal::Effect;
use super::{emit, LearnCache, Note, Out, Snapshot};
use crate::features::UserState;
use crate::pipeline::Decision;
use trimtab_privacy::UserKey;
use trimtab_rules::AdjustRequest;

/// Admits `r` (see the module doc); `trigger` is the id of the event that caused it.
#[allow(clippy::too_many_arguments)]
pub(super) fn admit(
    snap: &Snapshot<'_>,
    user: &UserKey,
    state: &mut UserState,
    cache: &mut LearnCache,
    r: AdjustRequest,
    trigger: Option<&str>,
    now: i64,
    out: &mut Out,
) -> Option<Decision> {
    if state.holdout == Some(true) {
        return None;
    }
    let mut bandit = None;
    let (experiment, arm, propensity, variant, params) =
        match snap.experiments.override_for(state, &r.slot, now) {
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
            None if snap.bandits.covers(&r.slot) => {
                if state.adjustments.contains_key(r.slot.as_str()) {
                    return None; // decided on this page already: keep it stable
                }
                let x = crate::features::context::of_state(state, now);
                let c = snap.bandits.choose(&r.slot, user, &x, now)?;
                let picked = (None, None, c.propensity, c.variant.clone(), r.params);
                bandit = Some(c);
                picked
            }
            None => (None, None, 1.0, r.variant, r.params),
        };
    if state
        .adjustments
        .get(r.slot.as_str())
        .is_some_and(|v| *v == *variant)
        && state
            .shown
            .get(r.slot.as_str())
            .is_some_and(|(_, p)| crate::features::state::same_params(p, &params))
    {
        return None; // already showing exactly this: nothing to change
    }
    let (per_session, per_day) = snap.delivery.caps(&r.slot);
    let (in_session, in_day) = state.cap_counts(&r.slot, now);
    if (per_session > 0 && in_session >= per_session) || (per_day > 0 && in_day >= per_day) {
        snap.metrics
            .adjustments_capped
            .with_label_values(&[&r.slot])
            .inc();
        return None;
    }
    let (idb, id) = match trigger {
        Some(ev) => Decision::derived_id(user, ev, &r.slot, out.decisions.len()),
        None => Decision::new_id(),
    };
    emit(
        state,
        out,
        Effect::Decided {
            slot: r.slot.clone(),
            variant: variant.clone(),
            params: params.clone(),
            id: id.clone(),
            experiment: experiment.clone(),
        },
        now,
    );
    let source = if let Some(c) = bandit {
        snap.metrics
            .bandit_decisions
            .with_label_values(&[&r.slot, c.group.as_str(), &variant])
            .inc();
        out.learn.push((idb, c.record.clone()));
        out.notes.push(Note::Chosen {
            id: idb,
            rec: Box::new(c.record.clone()),
        });
        cache.insert(idb, c.record, now);
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
        ts: now,
        session: state.session.clone(),
        trigger: trigger.map(str::to_string),
    })
}
