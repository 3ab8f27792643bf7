//! Exporting a slot's decision log: the documented logged-bandit-feedback JSONL
//! (`{"context", "action", "reward", "propensity"}` per line, see `docs/ope.md`) or full
//! records. Used by `GET /v1/bandits/{slot}/log`, `trimtab export-log` and the trainer.

use super::record::LearnRecord;
use trimtab_store::{Store, StoreError};

/// Every stored record of the slot with its decision id, oldest first (one decode each).
pub fn records_with_ids(
    store: &Store,
    slot: &str,
) -> Result<Vec<([u8; 16], LearnRecord)>, StoreError> {
    let mut recs: Vec<([u8; 16], LearnRecord)> = store
        .learn_records(|b| LearnRecord::decode(b).filter(|r| r.slot == slot))?
        .into_iter()
        .map(|(_, id, mut r)| {
            // A decision logged under an earlier context layout reads as the current one.
            crate::features::context::upgrade(&mut r.context);
            (id, r)
        })
        .collect();
    recs.sort_by_key(|(_, r)| r.ts);
    Ok(recs)
}

/// The slot's records, oldest first. Without `include_open`, only decisions whose attribution
/// window has closed (their reward is final).
pub fn records(
    store: &Store,
    slot: &str,
    now: i64,
    include_open: bool,
) -> Result<Vec<LearnRecord>, StoreError> {
    Ok(records_with_ids(store, slot)?
        .into_iter()
        .map(|(_, r)| r)
        .filter(|r| include_open || r.closed(now))
        .collect())
}

/// JSONL: one log row (or full record with `full`) per line.
pub fn write_jsonl(
    store: &Store,
    slot: &str,
    now: i64,
    include_open: bool,
    full: bool,
) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::new();
    for r in records(store, slot, now, include_open)? {
        let line = if full {
            r.to_json()
        } else {
            serde_json::to_value(r.log_row()).unwrap_or_default()
        };
        out.extend_from_slice(line.to_string().as_bytes());
        out.push(b'\n');
    }
    Ok(out)
}
