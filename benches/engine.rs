//! Criterion benchmarks of the engine's per-event hot path and of group commit.
//!
//! Run: `cargo bench --bench engine`. Each group pairs a measurement with a baseline measured
//! in the same run (e.g. one commit per batch vs one commit per event), so `BENCHMARKS.md`
//! records ratios that survive noisy shared machines.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use serde_json::json;
use std::sync::Arc;
use trimtab::decide::view::{event_map, event_view, user_map, user_view, EventData};
use trimtab::event::{parse_batch, parse_client_message, Limits};
use trimtab::features::{FeatureConfig, UserState};
use trimtab::privacy::Table;
use trimtab::privacy::{TokenSigner, UserKey};
use trimtab::rules::{RuleInput, RuleLimits, Rules};
use trimtab_store::{Store, UserRows};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn batch_body(n: usize, now: i64) -> Vec<u8> {
    let events: Vec<_> = (0..n)
        .map(|i| {
            json!({"id": format!("e{i}"), "type": "scroll", "session": "s1", "ts": now,
                "props": {"depth": (i % 100) as f64}, "context": {"page": "/article/a", "hour": 20},
                "consent": {"analytics": true, "personalization": true}})
        })
        .collect();
    serde_json::to_vec(&json!({ "events": events })).unwrap()
}

fn ingest(c: &mut Criterion) {
    let now = now_ms();
    let limits = Limits::default();
    let mut g = c.benchmark_group("ingest");
    let body = batch_body(10, now);
    g.throughput(Throughput::Elements(10));
    g.bench_function("parse_validate_batch10", |b| {
        b.iter(|| parse_batch(black_box(&body), &limits, now).unwrap())
    });
    // The same events as a WebSocket message (`{"type":"events","events":[…]}`).
    let mut msg = br#"{"type":"events","#.to_vec();
    msg.extend_from_slice(&body[1..]);
    g.bench_function("parse_client_message_batch10", |b| {
        b.iter(|| parse_client_message(black_box(&msg), &limits, now).unwrap())
    });
    // Baseline: plain serde_json parsing of the same bytes, no validation.
    g.bench_function("baseline_serde_json_value_batch10", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&body)).unwrap())
    });
    g.finish();

    let signer = TokenSigner::new([7; 32]);
    let token = signer.issue(&UserKey([1; 16]), u64::MAX / 2);
    c.bench_function("token_verify", |b| {
        b.iter(|| signer.verify(black_box(&token), 1).unwrap())
    });
}

fn features_and_rules(c: &mut Criterion) {
    let now = now_ms();
    let cfg = FeatureConfig::default();
    let events = parse_batch(&batch_body(100, now), &Limits::default(), now)
        .unwrap()
        .events;
    let key = UserKey([3; 16]);
    let mut state = UserState::default();
    for e in &events {
        state.apply(&e.event, &cfg);
    }
    let ev = &events[80].event;
    let mut g = c.benchmark_group("per_event");
    g.bench_function("features_apply", |b| {
        b.iter_batched(
            || state.clone(),
            |mut s| s.apply(black_box(ev), &cfg),
            BatchSize::SmallInput,
        )
    });
    // v1's input: the whole user map built, and deep-copied into each evaluation.
    g.bench_function("user_map_build", |b| {
        b.iter(|| user_map(&key, black_box(&state), now))
    });
    let rules = Rules::load(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts")),
        RuleLimits::default(),
    )
    .unwrap();
    let input = RuleInput {
        user: rhai::Dynamic::from_map(user_map(&key, &state, now)),
        event: rhai::Dynamic::from_map(event_map(ev)),
        now_ms: now,
        scorer: None,
        kind: None,
    };
    g.bench_function("rules_evaluate_examples_maps", |b| {
        b.iter(|| rules.evaluate(black_box(&input)))
    });
    // What the engine does: lazy views over the state and the event (nothing is built that a
    // script does not read), the three example rules, one input each.
    let shared = Arc::new(state.clone());
    let inputs = [
        ("scroll_on_article", events[80].event.clone()),
        ("custom", custom_event(now)),
        ("hover_heartbeat", hover_event(now)),
    ];
    for (name, e) in inputs {
        let e = Arc::new(e);
        g.bench_function(format!("rules_with_views_{name}"), |b| {
            b.iter(|| {
                let input = RuleInput {
                    user: user_view(&key, shared.clone(), now),
                    event: event_view(EventData::Real(e.clone())),
                    now_ms: now,
                    scorer: None,
                    kind: Some(e.kind().as_str()),
                };
                rules.evaluate(black_box(&input))
            })
        });
    }
    g.finish();
}

fn custom_event(now: i64) -> trimtab::event::Event {
    let body = serde_json::to_vec(
        &json!({"events": [{"id": "c1", "type": "custom", "session": "s1",
        "ts": now, "props": {"name": "signup", "plan": "pro", "seats": 3},
        "consent": {"analytics": true, "personalization": true}}]}),
    )
    .unwrap();
    parse_batch(&body, &Limits::default(), now)
        .unwrap()
        .events
        .remove(0)
        .event
}

fn hover_event(now: i64) -> trimtab::event::Event {
    let body = serde_json::to_vec(
        &json!({"events": [{"id": "h1", "type": "hover", "session": "s1",
        "ts": now, "target": "pricing", "props": {"phase": "heartbeat", "duration_ms": 800},
        "consent": {"analytics": true, "personalization": true}}]}),
    )
    .unwrap();
    parse_batch(&body, &Limits::default(), now)
        .unwrap()
        .events
        .remove(0)
        .event
}

fn group_commit(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut seq = 0u64;
    // One event (120 bytes, sealed) for one of 64 users, as a shard hands it to the writer.
    let mut rows = |u: u8| {
        seq += 1;
        let mut idh = [0u8; 16];
        idh[..8].copy_from_slice(&seq.to_le_bytes());
        let user = UserKey([u; 16]);
        let sealer = store.sealer(&user);
        let mut r = UserRows::new(user, sealer.row());
        r.events
            .push((seq, idh, sealer.seal(&user, Table::Event, &[7u8; 120])));
        r
    };
    let mut g = c.benchmark_group("commit");
    g.sample_size(20);
    g.throughput(Throughput::Elements(64));
    // 64 one-event batches in one durable transaction (what the writer does under load) ...
    g.bench_function("group_of_64", |b| {
        b.iter_batched(
            || (0..64).map(|i| rows(i as u8)).collect::<Vec<_>>(),
            |m| store.commit(m, Vec::new()).unwrap(),
            BatchSize::SmallInput,
        )
    });
    // ... against the baseline of one durable transaction per batch.
    g.bench_function("baseline_one_txn_each_x64", |b| {
        b.iter_batched(
            || (0..64).map(|i| rows(i as u8)).collect::<Vec<_>>(),
            |m| {
                for x in m {
                    store.commit(vec![x], Vec::new()).unwrap();
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// Sealing one record (ChaCha20-Poly1305, nonce ‖ ciphertext ‖ tag) at the sizes the hot path
/// seals: an event (~100 B), a decision (~300 B), a checkpoint (~2 KiB); against the baseline
/// of the same allocation and copy without encryption.
fn seal(c: &mut Criterion) {
    let user = UserKey([3; 16]);
    let sealer = trimtab::privacy::crypto::Sealer::new(&[9u8; 32]);
    let mut g = c.benchmark_group("seal");
    for n in [100usize, 300, 2048] {
        let plain = vec![7u8; n];
        g.bench_function(format!("sealer_{n}b"), |b| {
            b.iter(|| sealer.seal(&user, Table::Event, black_box(&plain)))
        });
        g.bench_function(format!("baseline_copy_{n}b"), |b| {
            b.iter(|| {
                let mut out = Vec::with_capacity(n + 28);
                out.extend_from_slice(&[1u8; 12]);
                out.extend_from_slice(black_box(&plain));
                out.extend_from_slice(&[2u8; 16]);
                out
            })
        });
        let sealed = sealer.seal(&user, Table::Event, &plain);
        g.bench_function(format!("open_{n}b"), |b| {
            b.iter(|| sealer.open(&user, Table::Event, black_box(&sealed)))
        });
    }
    g.finish();
}

criterion_group!(benches, ingest, features_and_rules, group_commit, seal);
criterion_main!(benches);
