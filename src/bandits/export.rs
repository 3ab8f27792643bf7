//! Exporting a slot's decision log: the documented logged-bandit-feedback JSONL
//! (`{"context", "action", "reward", "propensity"}` per line, see `docs/ope.md`) or full
//! records. Used by `GET /v1/bandits/{slot}/log`, `trimtab export-log` and the trainer.

use super::record::LearnRecord;
use crate::store::{Store, StoreError};

/// The slot's records, oldest first. Without `include_open`, only decisions whose attribution
/// window has closed (their reward is final).
pub fn records(
    store: &Store,
    slot: &str,
    now: i64,
    include_open: bool,
) -> Result<Vec<LearnRecord>, StoreError> {
    let mut recs: Vec<LearnRecord> = store
        .learn_records(|b| LearnRecord::decode(b).is_some_and(|r| r.slot == slot))?
        .into_iter()
        .filter_map(|(_, _, b)| LearnRecord::decode(&b))
        .filter(|r| include_open || r.closed(now))
        .collect();
    recs.sort_by_key(|r| r.ts);
    Ok(recs)
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
