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
    engine_with(dir, crate::config::PipelineConfig::default())
}

/// An engine of two shards over `dir` with these pipeline settings.
fn engine_with(dir: &std::path::Path, pipeline: crate::config::PipelineConfig) -> Engine {
    let cfg = Config {
        data: dir.join("data"),
        scripts: dir.join("scripts"),
        models: dir.join("models"),
        shards: 2,
        pipeline,
        ..Config::default()
    };
    Engine::open(Arc::new(cfg))
        .unwrap()
        .start(Pseudonymizer::new([3; 32]))
        .unwrap()
}

/// Parsed clicks of user number `u` on `target-{t}` for each `t`, with ids `u{u}-{t}`.
fn clicks(u: usize, targets: impl IntoIterator<Item = usize>, now: i64) -> Vec<Event> {
    let evs: Vec<Value> = targets
        .into_iter()
        .map(|t| {
            json!({"id": format!("u{u}-{t}"), "type": "click", "target": format!("target-{t}"),
                   "session": "s", "ts": now, "props": {},
                   "consent": {"analytics": true, "personalization": true}})
        })
        .collect();
    let body = json!({ "events": evs }).to_string();
    parse_batch(body.as_bytes(), &Limits::default(), now)
        .unwrap()
        .events
        .into_iter()
        .map(|i| i.event)
        .collect()
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
    let e = engine_with(
        dir.path(),
        crate::config::PipelineConfig {
            user_cache_mb: 1,
            // Users are evictable once their rows are indexed: index at once.
            index_ms: 2,
            ..Default::default()
        },
    );
    // Each user clicks 60 different targets: a few KiB of state each, far below the count cap
    // (50 000 per shard) and, for 1 200 users, several times the 1 MiB budget.
    let now = trimtab_util::now_ms();
    let users = 1200;
    for u in 0..users {
        let evs = clicks(u as usize, 0..60, now);
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

#[test]
fn users_at_rest_are_held_compact_and_come_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine_with(
        dir.path(),
        crate::config::PipelineConfig {
            compact_idle_ms: 100,
            checkpoint_ms: 20,
            index_ms: 2,
            user_cache: 30,
            ..Default::default()
        },
    );
    let now = trimtab_util::now_ms();
    let clicks = |u: usize, ids: &[usize]| clicks(u, ids.iter().copied(), now);
    let users: Vec<UserKey> = (0..40)
        .map(|u| e.pseudo.user(&format!("rest-{u}")))
        .collect();
    for (u, k) in users.iter().enumerate() {
        answer(e.pipeline.submit_events(vec![(*k, clicks(u, &[0, 1, 2]))]));
    }
    let before: Vec<_> = users
        .iter()
        .map(|k| answer(e.pipeline.peek(*k)).expect("known"))
        .collect();
    let wait_compact = |n: i64| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while e.metrics.users_compact.get() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "{} of {n} users compact",
                e.metrics.users_compact.get()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    // Checkpointed, indexed, idle for 100 ms: every one is compact, and still cached.
    wait_compact(40);
    assert_eq!(e.metrics.users_cached.get(), 40);
    // Taken back exactly as they were.
    for (k, want) in users.iter().zip(&before) {
        let got = answer(e.pipeline.peek(*k)).expect("still known");
        assert_eq!(got, *want);
    }
    wait_compact(40);
    // Their old ids are still duplicates (their `seen` rows answer), new ones are taken.
    for (u, k) in users.iter().enumerate() {
        let out = answer(e.pipeline.submit_events(vec![(*k, clicks(u, &[2, 3]))]));
        assert_eq!((out.accepted, out.duplicates), (1, 1), "user {u}");
    }
    assert_eq!(e.metrics.users_cached.get(), 40);
    let got = answer(e.pipeline.export(users[7])).expect("exported");
    assert_eq!(got.events.len(), 4);
    assert_eq!(got.state["events"], 4, "{}", got.state);
    // Compact again once at rest; erasure of a compact user takes it from the cache.
    wait_compact(40);
    assert!(answer(e.pipeline.erase(users[0])).key);
    assert_eq!(e.metrics.users_cached.get(), 39);
    assert_eq!(e.metrics.users_compact.get(), 39);
    assert!(answer(e.pipeline.export(users[0])).is_none());
    // Compact users count against the cache's cap: 40 more users evict the least recently
    // used, compact ones included, and an evicted one loads from the store whole.
    for u in 0..40 {
        let k = e.pseudo.user(&format!("late-{u}"));
        answer(e.pipeline.submit_events(vec![(k, clicks(100 + u, &[0]))]));
    }
    let cached = e.metrics.users_cached.get();
    assert!(cached <= 60, "{cached} cached with a cap of 30 per shard");
    assert!(e.metrics.users_compact.get() < 39);
    let got = answer(e.pipeline.export(users[9])).expect("exported");
    assert_eq!(got.events.len(), 4);
    assert_eq!(got.state["events"], 4, "{}", got.state);
    e.stop();
}

/// Deduplication answers exactly whether a cached user's ids are pending, stored or new, and a
/// user's filter of stored ids spares the store read for batches of new ids: one read fills
/// it, later batches of new ids read nothing; a user that outgrows its filter has it built
/// again, larger, from one read; a user with more stored ids than the largest filter holds
/// well reads for every batch again; after a restart the filter is filled anew.
#[test]
fn duplicates_are_exact_and_new_ids_skip_the_store_read() {
    let dir = tempfile::tempdir().unwrap();
    // Checkpoints only when the test asks (`filed`) or at shutdown: what the filter holds at
    // each step is then fixed (and with it, since the test's ids hash the same every run,
    // whether a new id is a false "maybe").
    let settings = || crate::config::PipelineConfig {
        checkpoint_ms: 3_600_000,
        index_ms: 2,
        ..Default::default()
    };
    let e = engine_with(dir.path(), settings());
    let now = trimtab_util::now_ms();
    // Clicks of user number `n` (its ids `u{n}-{t}`), as (accepted, duplicates); batches of
    // at most 100 (the limit of one batch), so a range up to 100 is one batch.
    let submit = |e: &Engine, n: usize, ids: std::ops::Range<usize>| {
        let k = e.pseudo.user(&format!("dedup-{n}"));
        let ids: Vec<usize> = ids.collect();
        ids.chunks(100).fold((0, 0), |(a, d), chunk| {
            let evs = clicks(n, chunk.iter().copied(), now);
            let out = answer(e.pipeline.submit_events(vec![(k, evs)]));
            (a + out.accepted, d + out.duplicates)
        })
    };
    let send = |e: &Engine, ids| submit(e, 0, ids);
    let few = |e: &Engine, ids| submit(e, 1, ids);
    let reads = |e: &Engine| e.metrics.dedup_reads.get();
    // Every user checkpointed and the checkpoints indexed: pending ids are filed at the
    // user's next input.
    let filed = |e: &Engine| {
        assert!(e
            .pipeline
            .checkpoint_all(std::time::Duration::from_secs(20)))
    };
    assert_eq!(send(&e, 0..10), (10, 0));
    assert_eq!(reads(&e), 0, "a new user has nothing stored to read");
    // The second batch reads once, filling the filter; pending or stored, old ids are caught.
    assert_eq!(send(&e, 5..15), (5, 5));
    assert_eq!(reads(&e), 1);
    filed(&e);
    for round in 0..5 {
        let from = 15 + 10 * round;
        assert_eq!(send(&e, from..from + 10), (10, 0), "round {round}");
    }
    assert_eq!(reads(&e), 1, "batches of new ids read nothing");
    assert_eq!(send(&e, 0..65), (0, 65), "every id a duplicate");
    // 65 stored and pending; 20 more take it past what the smallest filter holds: once they
    // are filed, the next batch reads once to build it again, larger, and batches of new ids
    // read nothing again.
    assert_eq!(send(&e, 65..85), (20, 0));
    filed(&e);
    let r = reads(&e);
    assert_eq!(send(&e, 85..90), (5, 0));
    assert_eq!(reads(&e), r + 1, "built again, larger, from one read");
    assert_eq!(send(&e, 90..95), (5, 0));
    assert_eq!(reads(&e), r + 1, "the larger filter answers new ids");
    assert_eq!(send(&e, 0..95), (0, 95));
    // Past what the largest filter holds, once filed: every batch reads (and still answers
    // exactly).
    assert_eq!(send(&e, 95..700), (605, 0));
    filed(&e);
    let r = reads(&e);
    assert_eq!(send(&e, 700..705), (5, 0));
    assert_eq!(send(&e, 705..710), (5, 0));
    assert_eq!(reads(&e), r + 2, "a saturated filter reads for every batch");
    assert_eq!(send(&e, 0..710), (0, 710));
    e.stop();
    drop(e);
    // After a restart: old ids are duplicates (one read fills the filter again), new ones
    // are taken; a user with few ids reads once, then not for new ids.
    let e = engine_with(dir.path(), settings());
    assert_eq!(send(&e, 705..715), (5, 5));
    assert_eq!(few(&e, 0..5), (5, 0));
    e.stop();
    drop(e);
    let e = engine_with(dir.path(), settings());
    let r = reads(&e);
    assert_eq!(few(&e, 3..8), (3, 2));
    assert_eq!(reads(&e), r + 1);
    assert_eq!(few(&e, 8..20), (12, 0));
    assert_eq!(
        reads(&e),
        r + 1,
        "filled from the store, the filter answers new ids"
    );
    assert_eq!(few(&e, 0..20), (0, 20));
    e.stop();
}

/// Waits for a queued request's answer.
fn answer<T>(p: Result<super::Pending<T>, SubmitError>) -> T {
    p.expect("queued")
        .blocking_recv()
        .expect("answered")
        .expect("no error")
}

#[test]
fn events_right_after_the_erasure_of_an_unknown_user_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let (a, _) = two_users(&e);
    // Queued back to back: the shard has accepted the erasure (alice had no key) and made
    // alice a new key for the events before the indexer runs the erasure.
    let erased = e.pipeline.erase(a).unwrap();
    let stored = e
        .pipeline
        .submit_events(vec![(a, events(&["a1"]))])
        .unwrap();
    assert!(!erased.blocking_recv().unwrap().unwrap().key);
    assert_eq!(stored.blocking_recv().unwrap().unwrap().accepted, 1);
    let ex = answer(e.pipeline.export(a)).expect("alice's events after the erasure are kept");
    assert_eq!(ex.events.len(), 1, "{:?}", ex.events);
    e.stop();
}

#[test]
fn an_image_moves_a_user_to_another_engine_and_replaces_what_was_there() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    std::fs::create_dir_all(one.join("scripts")).unwrap();
    std::fs::write(
        one.join("scripts/probe.rhai"),
        "if event.type == \"custom\" { adjust(\"probe\", \"v1\", #{}); }",
    )
    .unwrap();
    let e1 = engine(&one);
    let (a, b) = two_users(&e1);
    answer(
        e1.pipeline
            .submit_events(vec![(a, events(&["a1", "a2", "a3"]))]),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let images = rt
        .block_on(e1.pipeline.images(&[a, b]))
        .expect("queued")
        .expect("read");
    // bob is unknown here: no image.
    assert_eq!(images.len(), 1);
    let (who, image) = images.into_iter().next().unwrap();
    assert_eq!(who, a);
    assert!(!image.state.is_empty());
    let want = answer(e1.pipeline.export(a)).expect("alice");
    assert!(!want.decisions.is_empty(), "the rule made no decision");
    assert_eq!(image.decisions.len(), want.decisions.len());
    e1.stop();

    // The other engine held an older alice (an earlier ownership): the image replaces her.
    let e2 = engine(&two);
    answer(e2.pipeline.submit_events(vec![(a, events(&["old"]))]));
    answer(e2.pipeline.restore(a, image));
    let got = answer(e2.pipeline.export(a)).expect("alice restored");
    assert_eq!(got.state["events"], want.state["events"]);
    assert_eq!(got.state["events"], 3);
    let ids = |x: &super::UserExport| x.decisions.iter().map(|d| d.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&got), ids(&want));
    assert!(
        got.events.is_empty(),
        "the older events went: {:?}",
        got.events
    );
    // She carries on from there, and the restored records survive a restart.
    answer(e2.pipeline.submit_events(vec![(a, events(&["a4"]))]));
    e2.stop();
    drop(e2);
    let e2 = engine(&two);
    let got = answer(e2.pipeline.export(a)).expect("alice after a restart");
    assert_eq!(got.state["events"], 4);
    assert_eq!(ids(&got), ids(&want));
    // An empty image: a new user.
    answer(e2.pipeline.restore(a, super::UserImage::default()));
    let got = answer(e2.pipeline.export(a)).expect("alice anew");
    assert_eq!(got.state["events"], 0);
    assert!(got.decisions.is_empty());
    e2.stop();
}

#[test]
fn statistics_can_be_added_as_a_whole() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let key = |g: &str| {
        (
            g.to_string(),
            "all".to_string(),
            "a".to_string(),
            "m".to_string(),
        )
    };
    answer(
        e.pipeline
            .add_stats(vec![(key("x/p3"), [2.0, 1.0, 1.0, 0.0, 0.0, 0.0])]),
    );
    answer(
        e.pipeline
            .add_stats(vec![(key("x/p3"), [-1.0, 0.0, 0.0, 0.0, 0.0, 0.0])]),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(e.pipeline.sync()).unwrap();
    let rows = e.partition_stats(3).unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].1 .1[0], 1.0);
    assert!(e.partition_stats(4).unwrap().is_empty());
    e.stop();
}
