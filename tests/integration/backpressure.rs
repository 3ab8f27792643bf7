//! A full shard queue answers 429 + `Retry-After` (HTTP) or `overloaded` with the ids (WS), and
//! nothing acknowledged is ever lost; retries with the same ids succeed without duplicates.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

/// One shard with a one-message queue, and a rule that takes a while (a loop well under the
/// operation limit and the timeout), so the shard is slow and its queue overflows.
const CONFIG: &str = r#"
shards = 1

[pipeline]
shard_queue = 1
retry_after_s = 1

[rules]
max_operations = 3000000
timeout_ms = 2000
"#;

const SLOW_RULE: &str = r#"
// Busy for a while on every event (no I/O, no clock: just arithmetic).
let x = 0;
for i in 0..100000 {
    x += i % 7;
}
"#;

const THREADS: usize = 8;
const PER_THREAD: usize = 8;

struct Sent {
    user: String,
    id: String,
    status: u16,
    retry_after: Option<String>,
}

#[test]
fn full_queue_gives_429_and_loses_nothing_acknowledged() {
    let s = Arc::new(Server::start(
        Opts::config(CONFIG).script("slow", SLOW_RULE),
    ));
    // The slow rule must succeed (it is slow, not failing), or the test proves nothing.
    let t0 = Instant::now();
    s.post_ok(
        WRITE_KEY,
        vec![for_user(
            custom(&eid("warm"), "warm", Value::Null),
            "bp-warm",
        )],
    );
    let one = t0.elapsed();

    // HTTP: many concurrent single-event requests, distinct ids, a few users.
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let s = s.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let user = format!("bp-user-{}", t % 4);
                barrier.wait();
                (0..PER_THREAD)
                    .map(|_| {
                        let id = eid("bp");
                        let e = for_user(custom(&id, "load", Value::Null), &user);
                        let r = s.post_events(WRITE_KEY, &batch(vec![e]));
                        Sent {
                            user: user.clone(),
                            id,
                            status: r.status,
                            retry_after: r.header("retry-after").map(str::to_string),
                        }
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let sent: Vec<Sent> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("sender thread"))
        .collect();

    let rejected: Vec<&Sent> = sent.iter().filter(|x| x.status == 429).collect();
    let accepted: Vec<&Sent> = sent.iter().filter(|x| x.status == 202).collect();
    assert_eq!(
        rejected.len() + accepted.len(),
        sent.len(),
        "statuses other than 202/429: {:?}",
        sent.iter().map(|x| x.status).collect::<Vec<_>>()
    );
    assert!(
        !rejected.is_empty(),
        "no 429 from {} concurrent requests on a 1-slot queue (one event took {one:?})",
        sent.len()
    );
    assert!(!accepted.is_empty(), "nothing was accepted");
    for r in &rejected {
        assert_eq!(
            r.retry_after.as_deref(),
            Some("1"),
            "429 without Retry-After"
        );
    }

    // Every 202 is in the export.
    let mut by_user: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for a in &accepted {
        by_user
            .entry(a.user.clone())
            .or_default()
            .insert(a.id.clone());
    }
    for (user, ids) in &by_user {
        let ex = s
            .export(user)
            .expect("export of a user with accepted events");
        let stored: BTreeSet<String> = exported_ids(&ex).into_iter().collect();
        let missing: Vec<_> = ids.difference(&stored).collect();
        assert!(
            missing.is_empty(),
            "acknowledged but not stored: {missing:?}"
        );
    }

    // Retrying the 429'd events with the same ids succeeds (sequentially: the queue drains).
    for r in &rejected {
        let e = for_user(custom(&r.id, "load", Value::Null), &r.user);
        let resp = poll(WAIT, || {
            let resp = s.post_events(WRITE_KEY, &batch(vec![e.clone()]));
            (resp.status != 429).then_some(resp)
        })
        .expect("retry kept getting 429");
        assert_eq!(resp.status, 202, "{}", resp.body);
        assert_eq!(resp.json["accepted"], 1, "{}", resp.body);
        by_user
            .entry(r.user.clone())
            .or_default()
            .insert(r.id.clone());
    }
    // Re-sending an acknowledged one is recognised as a duplicate.
    let a = accepted[0];
    let r = s.post_events(
        WRITE_KEY,
        &batch(vec![for_user(custom(&a.id, "load", Value::Null), &a.user)]),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(
        (r.json["accepted"].clone(), r.json["duplicates"].clone()),
        (0.into(), 1.into())
    );

    // Exactly the sent ids, each once.
    for (user, ids) in &by_user {
        let ex = s.export(user).expect("export");
        let stored = exported_ids(&ex);
        let set: BTreeSet<String> = stored.iter().cloned().collect();
        assert_eq!(
            set.len(),
            stored.len(),
            "duplicate events stored for {user}"
        );
        assert_eq!(&set, ids, "stored ids differ for {user}");
        assert_eq!(ex["state"]["events"], ids.len(), "state.events of {user}");
    }

    let slow = s.rule("slow").expect("slow rule listed");
    assert_eq!(slow["failures"], 0, "the slow rule must not fail: {slow}");
    assert_eq!(slow["state"], "active", "{slow}");
}

#[test]
fn websocket_overloaded_error_lists_ids_and_retries_succeed() {
    let s = Server::start(Opts::config(CONFIG).script("slow", SLOW_RULE));
    let user = "bp-ws-user";
    let t = s.identify(user);
    let mut ws = s.ws_connect(&t);

    // Fire a burst without waiting; each message is one batch of two events.
    let mut batches: Vec<Vec<String>> = Vec::new();
    for _ in 0..30 {
        let ids = vec![eid("w"), eid("w")];
        ws.send_events(
            ids.iter()
                .map(|id| custom(id, "burst", Value::Null))
                .collect(),
        );
        batches.push(ids);
    }
    // Each batch is answered exactly once: an ack or an overloaded error naming its ids.
    let mut acked: BTreeSet<String> = BTreeSet::new();
    let mut overloaded: Vec<Vec<String>> = Vec::new();
    let strs = |v: &Value| -> Vec<String> {
        v["ids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let end = deadline(Duration::from_secs(30));
    while acked.len() + overloaded.iter().map(Vec::len).sum::<usize>() < batches.len() * 2 {
        let m = ws
            .recv_json_until(end, |m| m["type"] == "ack" || m["type"] == "error")
            .unwrap_or_else(|| panic!("not every batch was answered; seen {:?}", ws.seen));
        if m["type"] == "ack" {
            acked.extend(strs(&m));
        } else {
            assert_eq!(m["code"], "overloaded", "{m}");
            let ids = strs(&m);
            assert!(
                batches.contains(&ids),
                "overloaded ids {ids:?} are not a sent batch"
            );
            overloaded.push(ids);
        }
    }
    assert!(
        !overloaded.is_empty(),
        "no overloaded error for a burst of 30 messages; acked {}",
        acked.len()
    );

    // Acknowledged ones are stored.
    let ex = s.export(user).expect("export");
    let stored: BTreeSet<String> = exported_ids(&ex).into_iter().collect();
    assert!(
        acked.is_subset(&stored),
        "acked but missing: {:?}",
        acked.difference(&stored)
    );

    // Retry the refused batches, one at a time, with the same ids.
    for ids in &overloaded {
        let got = poll(WAIT, || {
            ws.send_events(
                ids.iter()
                    .map(|id| custom(id, "burst", Value::Null))
                    .collect(),
            );
            let m = ws.recv_json_until(deadline(WAIT), |m| {
                (m["type"] == "ack" || m["type"] == "error") && strs(m) == *ids
            })?;
            (m["type"] == "ack").then_some(m)
        })
        .unwrap_or_else(|| panic!("retry of {ids:?} never acknowledged"));
        assert_eq!(got["duplicates"], 0, "{got}");
        acked.extend(ids.iter().cloned());
    }
    // A resend of an acked batch is a duplicate.
    let first = &batches[0];
    if acked.contains(&first[0]) {
        ws.send_events(
            first
                .iter()
                .map(|id| custom(id, "burst", Value::Null))
                .collect(),
        );
        let m = ws.wait_ack(&first[1]);
        assert_eq!(m["duplicates"], 2, "{m}");
    }

    let ex = s.export(user).expect("export");
    let stored = exported_ids(&ex);
    let set: BTreeSet<String> = stored.iter().cloned().collect();
    assert_eq!(set.len(), stored.len(), "duplicates stored");
    let all: BTreeSet<String> = batches.iter().flatten().cloned().collect();
    assert_eq!(set, all, "stored ids differ from sent ids");
}
