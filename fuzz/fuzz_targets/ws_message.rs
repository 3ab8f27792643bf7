//! A WebSocket client message: the typed parse must never panic and must agree with the
//! reference path — the same message, or an error with the same code and path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trimtab_wire::{parse_client_message, parse_client_message_reference, Limits};

const NOW: i64 = 1_780_000_000_000;

fuzz_target!(|body: &[u8]| {
    let limits = Limits::default();
    let fast = parse_client_message(body, &limits, NOW);
    if body.len() > limits.max_body_bytes {
        return;
    }
    let reference = parse_client_message_reference(body, &limits, NOW);
    match (&fast, &reference) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "the two paths parsed different messages"),
        (Err(a), Err(b)) => assert_eq!(
            (a.code, &a.path),
            (b.code, &b.path),
            "different errors: {a:?} vs {b:?}"
        ),
        _ => panic!("one path accepted, the other refused: {fast:?} vs {reference:?}"),
    }
});
