//! Reward attribution for bandit decisions (pure: over the user's state, recent records and a
//! lookup of stored ones).
//!
//! An event is an outcome of a bandit decision when
//! - it is a `click` or `conversion` carrying the decision's id;
//! - it is a `conversion` without an id while a bandit slot shows a decision (each such slot);
//! - it is a finished `dwell` on the slot's element (`target` = slot name) of at least the
//!   slot's `dwell_ms`, while the slot shows the decision.
//!
//! Only the first outcome of each kind within the decision's window counts. The updated
//! learning record goes into the step's output (stored with the event, same commit) with a
//! note for the learner.

use std::collections::HashMap;

use super::{Note, Out, Snapshot};
use crate::bandits::def::RewardKind;
use crate::bandits::record::LearnRecord;
use crate::features::UserState;
use crate::pipeline::Decision;
use trimtab_wire::{Event, Phase, Props};

/// Most learning records a cached user keeps in memory (recent decisions).
const MAX_CACHED: usize = 64;

/// Stored learning records of one user, by decision id (the shard reads its store snapshot;
/// tests use a map).
pub trait LearnLookup {
    fn learn_record(&mut self, id: &[u8; 16]) -> Option<LearnRecord>;
}

/// No stored records (a new user, or tests).
pub struct NoRecords;

impl LearnLookup for NoRecords {
    fn learn_record(&mut self, _: &[u8; 16]) -> Option<LearnRecord> {
        None
    }
}

/// A user's recent learning records: newer than the store's copy while a commit is in flight,
/// so outcomes arriving back to back never overwrite each other.
#[derive(Default, Debug)]
pub struct LearnCache {
    recs: HashMap<[u8; 16], LearnRecord>,
}

impl LearnCache {
    pub fn is_empty(&self) -> bool {
        self.recs.is_empty()
    }

    /// An estimate of the heap bytes the cached records hold.
    pub fn heap_bytes(&self) -> usize {
        self.recs
            .values()
            .map(|r| {
                64 + std::mem::size_of::<LearnRecord>()
                    + r.slot.len()
                    + r.policy.len()
                    + r.context.len() * 4
                    + r.candidates.iter().map(|c| c.len() + 24).sum::<usize>()
            })
            .sum()
    }

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

    fn get(&mut self, lookup: &mut dyn LearnLookup, id: &[u8; 16]) -> Option<&mut LearnRecord> {
        if !self.recs.contains_key(id) {
            let rec = lookup.learn_record(id)?;
            self.recs.insert(*id, rec);
        }
        self.recs.get_mut(id)
    }
}

/// Records the outcomes `ev` is of into the cached records; the updated records go to
/// `out.learn`, with a note for the learner.
pub(super) fn outcomes(
    snap: &Snapshot<'_>,
    state: &UserState,
    cache: &mut LearnCache,
    lookup: &mut dyn LearnLookup,
    ev: &Event,
    now: i64,
    out: &mut Out,
) {
    let bandits = snap.bandits;
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
                if bandits.covers(slot) {
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
                let long_enough = bandits
                    .live(slot)
                    .is_some_and(|l| *duration_ms as i64 >= l.def.dwell_ms);
                if long_enough {
                    hits.extend(shown(slot).map(|id| (id, RewardKind::Dwell)));
                }
            }
        }
        _ => {}
    }
    for (id, kind) in hits {
        let Some(rec) = cache.get(lookup, &id) else {
            continue; // not a bandit decision (or erased, or not this user's)
        };
        if !rec.record(kind, now) {
            continue;
        }
        out.notes.push(Note::Reward {
            id,
            slot: rec.slot.clone(),
            kind,
        });
        out.learn.push((id, rec.clone()));
    }
}
