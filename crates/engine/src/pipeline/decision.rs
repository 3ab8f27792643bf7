//! Decisions: what was chosen for a slot, why, and with which probability. Every adjustment
//! carries one; it is stored (sealed) before the adjustment is pushed, so rewards that cite its
//! id can always be attributed.

use std::collections::BTreeMap;

use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::json;
use trimtab_privacy::UserKey;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub id: String,
    pub slot: String,
    pub variant: String,
    pub params: BTreeMap<String, String>,
    /// `rule` (a trigger rule chose it) or `default` (nothing applied).
    pub source: String,
    pub rule: Option<String>,
    pub experiment: Option<String>,
    pub arm: Option<String>,
    pub propensity: f64,
    pub ts: i64,
    pub session: String,
    /// Id of the event that triggered it (None for timers and first-paint decisions).
    pub trigger: Option<String>,
}

impl Decision {
    pub fn new_id() -> ([u8; 16], String) {
        let mut b = [0u8; 16];
        rand::rng().fill_bytes(&mut b);
        (b, hex::encode(b))
    }

    /// The id of a decision an event caused: derived from the user, the event's id, the slot
    /// and how many decisions the step made before it, so that reading the same events again
    /// (a cluster node taking over a partition) makes the same decision under the same id —
    /// and the page's impressions and clicks, which name that id, still count for it.
    pub fn derived_id(
        user: &UserKey,
        event_id: &str,
        slot: &str,
        nth: usize,
    ) -> ([u8; 16], String) {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(b"trimtab/decision/v1");
        h.update(user.0);
        for part in [event_id.as_bytes(), slot.as_bytes()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.update((nth as u64).to_le_bytes());
        let mut b = [0u8; 16];
        b.copy_from_slice(&h.finalize()[..16]);
        (b, hex::encode(b))
    }

    pub fn id_bytes(id: &str) -> Option<[u8; 16]> {
        let v = hex::decode(id).ok()?;
        v.try_into().ok()
    }

    /// The `decision` object of the wire contract.
    pub fn wire(&self) -> serde_json::Value {
        json!({
            "id": self.id,
            "source": self.source,
            "rule": self.rule,
            "experiment": self.experiment,
            "arm": self.arm,
            "propensity": self.propensity,
        })
    }

    /// The `adjust` message pushed over WebSocket.
    pub fn adjust_message(&self) -> String {
        json!({
            "type": "adjust",
            "slot": self.slot,
            "variant": self.variant,
            "params": self.params,
            "decision": self.wire(),
        })
        .to_string()
    }

    pub fn encode(&self) -> Vec<u8> {
        // Plain data; postcard into a Vec cannot fail.
        postcard::to_allocvec(self).expect("Decision is postcard-serialisable")
    }

    pub fn decode(b: &[u8]) -> Option<Decision> {
        postcard::from_bytes(b).ok()
    }
}
