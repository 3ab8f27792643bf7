//! An HTTP event batch body: the typed parse (`parse_batch`: envelope, then each event straight
//! into `Event`) must never panic and must agree with the reference path over a
//! `serde_json::Value` — the same events, or an error with the same code and path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trimtab_wire::{parse_batch, parse_batch_value, parse_json, require_object, Limits};

/// A fixed clock, so that `ts` checks are deterministic.
const NOW: i64 = 1_780_000_000_000;

fuzz_target!(|body: &[u8]| {
    let limits = Limits::default();
    let fast = parse_batch(body, &limits, NOW);
    if body.len() > limits.max_body_bytes {
        return;
    }
    // Every body the API takes must be a JSON object first (`require_object`, as the handlers
    // and the typed parse check it), then the reference validates the Value.
    let reference = require_object(body)
        .and_then(|()| parse_json(body))
        .and_then(|v| parse_batch_value(v, &limits, NOW));
    match (&fast, &reference) {
        (Ok(a), Ok(b)) => assert_eq!(a.events, b.events, "the two paths parsed different events"),
        (Err(a), Err(b)) => assert_eq!(
            (a.code, &a.path),
            (b.code, &b.path),
            "different errors: {a:?} vs {b:?}"
        ),
        _ => panic!("one path accepted, the other refused: {fast:?} vs {reference:?}"),
    }
});
