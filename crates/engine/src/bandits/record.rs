//! The logged form of a bandit decision: context, candidates, chosen action, propensity,
//! policy, and the outcomes attributed to it. Stored per user (sealed with the user's key, so
//! erasure removes it) in the store's `learnlog` table; exported as logged-bandit-feedback
//! rows ([`trimtab_learn::ope::LogRow`]).

use serde::{Deserialize, Serialize};

use super::def::RewardKind;
use trimtab_learn::ope::LogRow;

/// Which arm of the comparison a decision belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Group {
    /// The bandit chose (with the logged propensity).
    Bandit,
    /// The user is in the slot's holdout: always the control, propensity 1.
    Holdout,
    /// The guardrail tripped (or the bandit is paused): the control, propensity 1.
    Fallback,
}

impl Group {
    pub fn as_str(self) -> &'static str {
        match self {
            Group::Bandit => "bandit",
            Group::Holdout => "holdout",
            Group::Fallback => "fallback",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LearnRecord {
    pub slot: String,
    /// Decision time (server ms).
    pub ts: i64,
    /// Context vector ([`crate::features::context`] layout).
    pub context: Vec<f32>,
    /// The candidates, in action order.
    pub candidates: Vec<String>,
    /// Index of the chosen candidate.
    pub action: u32,
    /// Probability with which it was chosen.
    pub propensity: f64,
    /// Policy name (`linucb`, …) and model version (updates absorbed) that chose.
    pub policy: String,
    pub version: u64,
    pub group: Group,
    /// The reward kind of the slot at decision time.
    pub reward: RewardKind,
    /// Attribution window (ms) at decision time.
    pub window_ms: i64,
    /// Server time of the first outcome of each [`RewardKind`] (index order), if within the
    /// window.
    pub outcomes: [Option<i64>; 3],
}

impl LearnRecord {
    pub fn encode(&self) -> Vec<u8> {
        // Plain data; postcard into a Vec cannot fail.
        postcard::to_allocvec(self).expect("LearnRecord is postcard-serialisable")
    }

    pub fn decode(b: &[u8]) -> Option<LearnRecord> {
        postcard::from_bytes(b).ok()
    }

    /// Whether the window has closed at `now` (the reward is final).
    pub fn closed(&self, now: i64) -> bool {
        now >= self.ts + self.window_ms
    }

    pub fn has(&self, kind: RewardKind) -> bool {
        self.outcomes[kind.index()].is_some()
    }

    /// The reward: 1 if the slot's reward outcome happened within the window.
    pub fn reward_value(&self) -> f64 {
        f64::from(u8::from(self.has(self.reward)))
    }

    /// Records an outcome at `at`; `false` if it was already recorded or is outside the window.
    pub fn record(&mut self, kind: RewardKind, at: i64) -> bool {
        let slot = &mut self.outcomes[kind.index()];
        if slot.is_some() || at < self.ts || at > self.ts + self.window_ms {
            return false;
        }
        *slot = Some(at);
        true
    }

    /// The logged-bandit-feedback row (one-hot actions, so `actions` is omitted).
    pub fn log_row(&self) -> LogRow {
        LogRow {
            context: self.context.clone(),
            actions: None,
            action: self.action as usize,
            reward: self.reward_value(),
            propensity: self.propensity,
            position: None,
        }
    }

    /// JSON for exports and the API (the log row plus the record's labels).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "slot": self.slot,
            "ts": self.ts,
            "context": self.context,
            "candidates": self.candidates,
            "action": self.action,
            "variant": self.candidates.get(self.action as usize),
            "propensity": self.propensity,
            "policy": self.policy,
            "version": self.version,
            "group": self.group.as_str(),
            "reward_kind": self.reward.as_str(),
            "window_ms": self.window_ms,
            "reward": self.reward_value(),
            "outcomes": {
                "click": self.outcomes[0],
                "conversion": self.outcomes[1],
                "dwell": self.outcomes[2],
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> LearnRecord {
        LearnRecord {
            slot: "cta".into(),
            ts: 1_000,
            context: vec![0.5; 12],
            candidates: vec!["a".into(), "b".into()],
            action: 1,
            propensity: 0.25,
            policy: "linucb".into(),
            version: 7,
            group: Group::Bandit,
            reward: RewardKind::Click,
            window_ms: 5_000,
            outcomes: [None; 3],
        }
    }

    #[test]
    fn outcomes_count_once_and_only_in_the_window() {
        let mut r = rec();
        assert_eq!(r.reward_value(), 0.0);
        assert!(!r.record(RewardKind::Click, 6_001), "after the window");
        assert!(!r.record(RewardKind::Click, 999), "before the decision");
        assert!(r.record(RewardKind::Click, 2_000));
        assert!(!r.record(RewardKind::Click, 2_500), "only the first counts");
        assert_eq!(r.reward_value(), 1.0);
        assert!(r.record(RewardKind::Conversion, 3_000));
        assert!(!r.closed(5_999) && r.closed(6_000));
        let back = LearnRecord::decode(&r.encode()).unwrap();
        assert_eq!(back, r);
        let row = r.log_row();
        assert_eq!((row.action, row.reward, row.propensity), (1, 1.0, 0.25));
    }
}
