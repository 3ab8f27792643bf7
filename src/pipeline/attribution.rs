//! Reward attribution for bandit decisions, on the shard that owns the user.
//!
//! An event is an outcome of a bandit decision when
//! - it is a `click` or `conversion` carrying the decision's id;
//! - it is a `conversion` without an id while a bandit slot shows a decision (each such slot);
//! - it is a finished `dwell` on the slot's element (`target` = slot name) of at least the
//!   slot's `dwell_ms`, while the slot shows the decision.
//!
//! Only the first outcome of each kind within the decision's window counts. The updated
//! learning record is stored with the event (same commit) and the learner is told at once.

use std::collections::HashMap;

use crossbeam_channel::Sender;

use crate::bandits::def::RewardKind;
use crate::bandits::learner::LearnMsg;
use crate::bandits::record::LearnRecord;
use crate::bandits::Bandits;
use crate::event::{Event, Phase, Props};
use crate::features::UserState;
use crate::metrics::Metrics;
use crate::pipeline::Decision;
use crate::privacy::UserKey;
use crate::store::Store;

/// Most learning records a cached user keeps in memory (recent decisions).
const MAX_CACHED: usize = 64;

/// A user's recent learning records: newer than the store's copy while a commit is in flight,
/// so outcomes arriving back to back never overwrite each other.
#[derive(Default)]
pub(crate) struct LearnCache {
    recs: HashMap<[u8; 16], LearnRecord>,
}

impl LearnCache {
    pub(crate) fn insert(&mut self, id: [u8; 16], rec: LearnRecord, now: i64) {
        if self.recs.len() >= MAX_CACHED {
            self.recs.retain(|_, r| !r.closed(now));
            if self.recs.len() >= MAX_CACHED {
                if let Some(oldest) = self.recs.iter().min_by_key(|(_, r)| r.ts).map(|(k, _)| *k) {
                    self.recs.remove(&oldest);
                }
            }
        }
        self.recs.insert(id, rec);
    }

    fn get(&mut self, store: &Store, user: &UserKey, id: &[u8; 16]) -> Option<&mut LearnRecord> {
        if !self.recs.contains_key(id) {
            let rec = store
                .learn_record(user, id)
                .ok()
                .flatten()
                .and_then(|b| LearnRecord::decode(&b))?;
            self.recs.insert(*id, rec);
        }
        self.recs.get_mut(id)
    }
}

/// What attributing needs from the shard.
pub(crate) struct Attribution<'a> {
    pub store: &'a Store,
    pub bandits: &'a Bandits,
    pub learner: Option<&'a Sender<LearnMsg>>,
    pub metrics: &'a Metrics,
}

impl Attribution<'_> {
    /// Records the outcomes `ev` is of; returns the updated records to store.
    pub(crate) fn outcomes(
        &self,
        user: &UserKey,
        state: &UserState,
        cache: &mut LearnCache,
        ev: &Event,
        now: i64,
    ) -> Vec<([u8; 16], Vec<u8>)> {
        let mut hits: Vec<([u8; 16], RewardKind)> = Vec::new();
        let shown = |slot: &str| {
            state
                .shown
                .get(slot)
                .and_then(|(id, _)| Decision::id_bytes(id))
        };
        match &ev.props {
            Props::Click { decision: Some(d) } => {
                hits.extend(Decision::id_bytes(d).map(|id| (id, RewardKind::Click)))
            }
            Props::Conversion {
                decision: Some(d), ..
            } => hits.extend(Decision::id_bytes(d).map(|id| (id, RewardKind::Conversion))),
            Props::Conversion { decision: None, .. } => {
                for slot in state.shown.keys() {
                    if self.bandits.covers(slot) {
                        hits.extend(shown(slot).map(|id| (id, RewardKind::Conversion)));
                    }
                }
            }
            Props::Dwell {
                phase: Phase::End,
                duration_ms,
                ..
            } => {
                if let Some(slot) = &ev.target {
                    let long_enough = self
                        .bandits
                        .live(slot)
                        .is_some_and(|l| *duration_ms as i64 >= l.def.dwell_ms);
                    if long_enough {
                        hits.extend(shown(slot).map(|id| (id, RewardKind::Dwell)));
                    }
                }
            }
            _ => {}
        }
        let mut out = Vec::new();
        for (id, kind) in hits {
            let Some(rec) = cache.get(self.store, user, &id) else {
                continue; // not a bandit decision (or erased, or not this user's)
            };
            if !rec.record(kind, now) {
                continue;
            }
            self.metrics
                .bandit_rewards
                .with_label_values(&[&rec.slot, kind.as_str()])
                .inc();
            if let Some(tx) = self.learner {
                let _ = tx.try_send(LearnMsg::Outcome {
                    id,
                    slot: rec.slot.clone(),
                    kind,
                });
            }
            out.push((id, rec.encode()));
        }
        out
    }
}
