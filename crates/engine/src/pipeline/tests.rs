//! The pipeline through its own entry points, on a real engine over a temporary data dir (the
//! shards, the writer, the indexer, the store): HTTP batches spread over shards resolve once
//! durable and count duplicates; a socket's batch is acknowledged into the socket's own queue
//! after the commit, naming its ids; export, erasure and the refusal of work after shutdown.

use std::sync::Arc;

use serde_json::{json, Value};
use trimtab_privacy::{Pseudonymizer, UserKey};
use trimtab_wire::{parse_batch, Event, Limits};

use super::SubmitError;
use crate::config::Config;
use crate::delivery::Outbound;
use crate::Engine;

fn engine(dir: &std::path::Path) -> Engine {
    let cfg = Config {
        data: dir.join("data"),
        scripts: dir.join("scripts"),
        models: dir.join("models"),
        shards: 2,
        ..Config::default()
    };
    Engine::open(Arc::new(cfg))
        .unwrap()
        .start(Pseudonymizer::new([3; 32]))
        .unwrap()
}

/// Parsed events of `user` with these ids (custom events, full consent).
fn events(ids: &[&str]) -> Vec<Event> {
    let evs: Vec<Value> = ids
        .iter()
        .map(|id| {
            json!({"id": id, "type": "custom", "session": "s", "ts": trimtab_util::now_ms(),
                   "props": {"name": "n"}, "context": {},
                   "consent": {"analytics": true, "personalization": true}})
        })
        .collect();
    let body = json!({ "events": evs }).to_string();
    parse_batch(body.as_bytes(), &Limits::default(), trimtab_util::now_ms())
        .unwrap()
        .events
        .into_iter()
        .map(|i| i.event)
        .collect()
}

/// Two users on different shards (the pseudonyms decide the shard).
fn two_users(e: &Engine) -> (UserKey, UserKey) {
    let a = e.pseudo.user("alice");
    let b = (0..100)
        .map(|i| e.pseudo.user(&format!("bob-{i}")))
        .find(|b| b.shard(2) != a.shard(2))
        .expect("a user on the other shard");
    (a, b)
}

#[test]
fn batches_over_shards_resolve_when_durable_and_count_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let (a, b) = two_users(&e);
    let out = e
        .pipeline
        .submit_events(vec![(a, events(&["a1", "a2"])), (b, events(&["b1"]))])
        .unwrap()
        .blocking_recv()
        .unwrap()
        .unwrap();
    assert_eq!((out.accepted, out.duplicates), (3, 0));
    // The same ids again, with one new: only the new one is stored.
    let out = e
        .pipeline
        .submit_events(vec![(a, events(&["a1", "a3"])), (b, events(&["b1"]))])
        .unwrap()
        .blocking_recv()
        .unwrap()
        .unwrap();
    assert_eq!((out.accepted, out.duplicates), (1, 2));
    let ex = e
        .pipeline
        .export(a)
        .unwrap()
        .blocking_recv()
        .unwrap()
        .unwrap()
        .expect("alice is stored");
    let ids: Vec<&str> = ex.events.iter().filter_map(|v| v["id"].as_str()).collect();
    assert_eq!(ids, ["a1", "a2", "a3"]);
    // Erasure: nothing of alice can be exported afterwards; bob is untouched.
    let counts = e
        .pipeline
        .erase(a)
        .unwrap()
        .blocking_recv()
        .unwrap()
        .unwrap();
    assert!(counts.key, "{counts:?}");
    assert!(e
        .pipeline
        .export(a)
        .unwrap()
        .blocking_recv()
        .unwrap()
        .unwrap()
        .is_none());
    assert!(e
        .pipeline
        .export(b)
        .unwrap()
        .blocking_recv()
        .unwrap()
        .unwrap()
        .is_some());
    e.stop();
    // After the stop nothing is taken.
    assert!(matches!(
        e.pipeline.submit_events(vec![(b, events(&["b2"]))]),
        Err(SubmitError::ShuttingDown)
    ));
}

#[test]
fn a_socket_s_batch_is_acknowledged_in_its_own_queue_after_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let user = e.pseudo.user("carol");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Outbound>(8);
    e.pipeline
        .submit_ws(user, events(&["c1", "c2"]), tx.clone(), vec!["c0".into()])
        .map_err(|(err, _)| err)
        .unwrap();
    let frame = match rx.blocking_recv() {
        Some(Outbound::Text(t)) => t,
        other => panic!("expected an ack, got {other:?}"),
    };
    let v: Value = serde_json::from_str(&frame).unwrap();
    assert_eq!(v["type"], "ack", "{v}");
    let mut ids: Vec<&str> = v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["c0", "c1", "c2"], "{v}");
    // Acknowledged means durable: a restart on the same data dir still has the events.
    e.stop();
    drop(e);
    let e = engine(dir.path());
    let ex = e
        .pipeline
        .export(user)
        .unwrap()
        .blocking_recv()
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ex.events.len(), 2, "{:?}", ex.events);
    // A resent id is a duplicate across the restart, acknowledged again.
    e.pipeline
        .submit_ws(user, events(&["c1"]), tx, Vec::new())
        .map_err(|(err, _)| err)
        .unwrap();
    let v: Value = match rx.blocking_recv() {
        Some(Outbound::Text(t)) => serde_json::from_str(&t).unwrap(),
        other => panic!("expected an ack, got {other:?}"),
    };
    assert_eq!(
        (v["ids"][0].clone(), v["duplicates"].clone()),
        (json!("c1"), json!(1)),
        "{v}"
    );

    e.stop();
}

#[test]
fn the_user_cache_is_bounded_in_bytes_not_only_in_count() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        data: dir.path().join("data"),
        scripts: dir.path().join("scripts"),
        models: dir.path().join("models"),
        shards: 2,
        pipeline: crate::config::PipelineConfig {
            user_cache_mb: 1,
            // Users are evictable once their rows are indexed: index at once.
            index_ms: 2,
            ..Default::default()
        },
        ..Config::default()
    };
    let e = Engine::open(Arc::new(cfg))
        .unwrap()
        .start(Pseudonymizer::new([3; 32]))
        .unwrap();
    // Each user clicks 60 different targets: a few KiB of state each, far below the count cap
    // (50 000 per shard) and, for 1 200 users, several times the 1 MiB budget.
    let now = trimtab_util::now_ms();
    let users = 1200;
    for u in 0..users {
        let evs: Vec<Value> = (0..60)
            .map(|t| {
                json!({"id": format!("u{u}-{t}"), "type": "click", "target": format!("target-{t}"),
                       "session": "s", "ts": now, "props": {},
                       "consent": {"analytics": true, "personalization": true}})
            })
            .collect();
        let body = json!({ "events": evs }).to_string();
        let evs = parse_batch(body.as_bytes(), &Limits::default(), now)
            .unwrap()
            .events
            .into_iter()
            .map(|i| i.event)
            .collect();
        e.pipeline
            .submit_events(vec![(e.pseudo.user(&format!("user-{u}")), evs)])
            .unwrap()
            .blocking_recv()
            .unwrap()
            .unwrap();
    }
    let cached = e.metrics.users_cached.get();
    assert!(
        cached < users / 2,
        "{cached} of {users} users still cached with a 1 MiB budget"
    );
    let bytes: i64 = (0..2)
        .map(|s| {
            e.metrics
                .users_cached_bytes
                .with_label_values(&[&s.to_string()])
                .get()
        })
        .sum();
    assert!(bytes > 0 && bytes <= 1 << 20, "{bytes} bytes cached");
    // An evicted user comes back whole.
    let back = e
        .pipeline
        .export(e.pseudo.user("user-0"))
        .unwrap()
        .blocking_recv()
        .unwrap()
        .unwrap()
        .expect("user-0");
    assert_eq!(back.events.len(), 60);
    assert_eq!(back.state["events"], 60, "{}", back.state);
    e.stop();
}
