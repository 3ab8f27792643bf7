//! Acknowledged means durable: after `kill -9` or a graceful SIGTERM, a restarted server has
//! every acknowledged event and its state change, and recognises resent ids as duplicates.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

fn ids_of(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["id"].as_str().expect("id").to_string())
        .collect()
}

#[test]
fn kill9_after_acks_loses_nothing_and_dedups_after_restart() {
    let mut s = Server::start(Opts::with_repo_scripts(""));
    let user = "durable-user";
    let t = s.identify(user);

    // Over HTTP: a page view and scrolls up to 87.5%.
    let http_events = vec![
        page_view(&eid("d"), "/article/durable"),
        scroll(&eid("d"), 30.0, "/article/durable"),
        scroll(&eid("d"), 87.5, "/article/durable"),
        scroll(&eid("d"), 50.0, "/article/durable"),
    ];
    let r = s.post_ok(&t, http_events.clone());
    assert_eq!(r["accepted"], 4, "{r}");
    // Over WS: more events, acknowledged one batch at a time.
    let mut ws = s.ws_connect(&t);
    let mut ws_events = Vec::new();
    for i in 0..5 {
        let e = custom(&eid("dw"), "ws-event", serde_json::json!({ "n": i }));
        ws_events.push(e.clone());
        ws.send_acked(vec![e]);
    }
    let before = s.export(user).expect("export before the crash");
    // The scroll offer fired at 87.5%: its decision is stored with the events.
    assert!(
        before["decisions"]
            .as_array()
            .is_some_and(|d| !d.is_empty()),
        "no decision stored: {before}"
    );
    s.kill9();
    drop(ws);
    s.restart();

    let after = s.export(user).expect("export after kill -9 and restart");
    let mut want = ids_of(&http_events);
    want.extend(ids_of(&ws_events));
    assert_eq!(exported_ids(&after), want, "events after restart: {after}");
    assert_eq!(
        after["state"]["events"], 9,
        "state.events: {}",
        after["state"]
    );
    assert_eq!(
        after["state"]["scroll"]["max_depth"], 87.5,
        "{}",
        after["state"]
    );
    assert_eq!(
        after["state"]["scroll"]["depth"], 50.0,
        "{}",
        after["state"]
    );
    assert_eq!(
        after["state"], before["state"],
        "state changed across the crash"
    );
    assert_eq!(
        after["decisions"].as_array().map(Vec::len),
        before["decisions"].as_array().map(Vec::len),
        "decisions changed across the crash"
    );

    // Resending acknowledged ids after the restart: all duplicates, nothing stored twice.
    let t = s.identify(user);
    let r = s.post_ok(&t, http_events.clone());
    assert_eq!(
        (r["accepted"].clone(), r["duplicates"].clone()),
        (0.into(), 4.into()),
        "{r}"
    );
    let mut ws = s.ws_connect(&t);
    let m = ws.send_acked(ws_events.clone());
    assert_eq!(m["duplicates"], 5, "{m}");
    let again = s.export(user).expect("export");
    assert_eq!(exported_ids(&again), want);
    assert_eq!(again["state"]["events"], 9);
}

#[test]
fn sigterm_closes_sockets_with_1001_exits_zero_and_keeps_acked_events() {
    let mut s = Server::start(Opts::with_repo_scripts(""));
    let user = "graceful-user";
    let t = s.identify(user);
    let mut ws = s.ws_connect(&t);
    let mut sent = Vec::new();
    for i in 0..6 {
        let e = scroll(&eid("g"), 10.0 * i as f64, "/article/g");
        sent.push(e.clone());
        ws.send_acked(vec![e]);
    }
    let r = s.post_ok(&t, vec![custom(&eid("g"), "http", Value::Null)]);
    assert_eq!(r["accepted"], 1);
    let mut want = ids_of(&sent);
    want.push(
        s.export(user).expect("export")["events"][6]["id"]
            .as_str()
            .expect("7th event")
            .to_string(),
    );

    let t0 = Instant::now();
    s.sigterm();
    let code = ws.wait_close(deadline(Duration::from_secs(15)));
    assert_eq!(code, Ok(Some(1001)), "close code on shutdown");
    // Answer the close and let the TCP connection end (as a browser would).
    while !matches!(ws.next(Duration::from_millis(100)), Got::Gone(_)) {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "socket never closed"
        );
    }
    let st = s
        .wait_exit(Duration::from_secs(15).saturating_sub(t0.elapsed()))
        .unwrap_or_else(|| panic!("still running 15 s after SIGTERM; stderr:\n{}", s.stderr()));
    assert!(
        st.success(),
        "exit status after SIGTERM: {st}; stderr:\n{}",
        s.stderr()
    );

    s.restart();
    let ex = s.export(user).expect("export after restart");
    assert_eq!(exported_ids(&ex), want, "{ex}");
    assert_eq!(ex["state"]["events"], 7);
    assert_eq!(ex["state"]["scroll"]["max_depth"], 50.0);
}

/// Posts `events` with the write key from outside the test's server handle (the server may be
/// killed meanwhile): `Some(body)` on 202, `None` on any other answer or a broken connection.
fn try_post(base: &str, events: &[Value]) -> Option<Value> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let body = serde_json::json!({ "events": events }).to_string();
    let mut r = agent
        .post(format!("{base}/v1/events"))
        .header("Authorization", format!("Bearer {WRITE_KEY}"))
        .content_type("application/json")
        .send(body.as_bytes())
        .ok()?;
    if r.status().as_u16() != 202 {
        return None;
    }
    serde_json::from_str(&r.body_mut().read_to_string().ok()?).ok()
}

/// One visit's worth of events of `user` (page view, scrolls, a hover, a click, a custom).
fn visit(user: &str, n: usize) -> Vec<Value> {
    let page = "/article/crash";
    let mut v = vec![for_user(page_view(&eid("c"), page), user)];
    for i in 0..n.saturating_sub(4) {
        v.push(for_user(
            scroll(&eid("c"), (i as f64 * 7.0) % 100.0, page),
            user,
        ));
    }
    v.push(for_user(
        hover(&eid("c"), "product-image", "start", 0),
        user,
    ));
    v.push(for_user(
        hover(&eid("c"), "product-image", "end", 900),
        user,
    ));
    v.push(for_user(click(&eid("c"), "cta"), user));
    v
}

/// What a restarted server must hold for one user: every acknowledged event (and nothing that
/// was never sent), and a state that is exactly the result of the stored events.
fn check_user(s: &Server, user: &str, acked: &[String], sent: &[String]) {
    let Some(ex) = s.export(user) else {
        // A user none of whose events was acknowledged before the kill (a slow machine) may
        // be unknown; one with acknowledged events may not.
        assert!(
            acked.is_empty(),
            "{user} lost entirely ({} acknowledged)",
            acked.len()
        );
        return;
    };
    let stored = exported_ids(&ex);
    for id in acked {
        assert!(stored.contains(id), "{user}: acknowledged {id} lost: {ex}");
    }
    for id in &stored {
        assert!(sent.contains(id), "{user}: {id} was never sent");
    }
    assert_eq!(
        ex["state"]["events"].as_u64(),
        Some(stored.len() as u64),
        "{user}: the state does not match its log: {}",
        ex["state"]
    );
    let max_depth = ex["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "scroll")
        .map(|e| e["props"]["depth"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert_eq!(
        ex["state"]["scroll"]["max_depth"].as_f64(),
        Some(max_depth),
        "{user}"
    );
}

#[test]
fn kill9_while_checkpoints_and_index_transactions_run_loses_no_acknowledged_event() {
    // Checkpoints every 20 ms and an index transaction every 5 ms: under load, a kill lands in
    // the middle of one or the other (or of a group commit).
    let mut s = Server::start(Opts::with_repo_scripts(
        "[pipeline]\ncheckpoint_ms = 20\nindex_ms = 5\n[delivery]\ncap_per_session = 0\ncap_per_user = 0\n",
    ));
    let users: Vec<String> = (0..12).map(|i| format!("crash-user-{i}")).collect();
    let mut acked: std::collections::HashMap<String, Vec<String>> = Default::default();
    let mut sent: std::collections::HashMap<String, Vec<String>> = Default::default();
    for cycle in 0..3u64 {
        let base = s.base.clone();
        let batches: Vec<Vec<Value>> = (0..40)
            .map(|b| {
                // Several users per batch, as a server-side integration would send them.
                (0..3)
                    .flat_map(|k| visit(&users[(b * 3 + k) % users.len()], 6))
                    .collect()
            })
            .collect();
        for b in &batches {
            for e in b {
                sent.entry(e["user"].as_str().unwrap().into())
                    .or_default()
                    .push(e["id"].as_str().unwrap().into());
            }
        }
        let sender = std::thread::spawn(move || {
            let mut ok = Vec::new();
            for b in batches {
                match try_post(&base, &b) {
                    Some(_) => ok.push(b),
                    None => break,
                }
            }
            ok
        });
        // Let traffic (and the checkpoints and index transactions it causes) run, then kill.
        std::thread::sleep(Duration::from_millis(150 + 120 * cycle));
        s.kill9();
        for b in sender.join().expect("sender") {
            for e in b {
                acked
                    .entry(e["user"].as_str().unwrap().into())
                    .or_default()
                    .push(e["id"].as_str().unwrap().into());
            }
        }
        s.restart();
        for u in &users {
            check_user(&s, u, acked.get(u).map_or(&[][..], Vec::as_slice), &sent[u]);
        }
    }
    let total: usize = acked.values().map(Vec::len).sum();
    assert!(total > 0, "nothing was acknowledged before the kills");
}

#[test]
fn kill9_during_replay_then_restart_recovers_every_user() {
    // No checkpoint during the run: after the kill, every user's state is in the log only.
    let cfg =
        "[pipeline]\ncheckpoint_ms = 3600000\n[delivery]\ncap_per_session = 0\ncap_per_user = 0\n";
    let mut s = Server::start(Opts::with_repo_scripts(cfg));
    let mut users: Vec<String> = Vec::new();
    let mut sent: std::collections::HashMap<String, Vec<String>> = Default::default();
    // 4 000 events of 400 users to replay; if the restart is done before it can be killed,
    // twice the users (a faster or less busy machine), up to five times (64 000 events).
    let mut caught = false;
    for attempt in 0..5 {
        let fresh: Vec<String> = (0..400 << attempt)
            .map(|i| format!("replay-user-{attempt}-{i}"))
            .collect();
        for chunk in fresh.chunks(10) {
            let events: Vec<Value> = chunk.iter().flat_map(|u| visit(u, 10)).collect();
            for e in &events {
                sent.entry(e["user"].as_str().unwrap().into())
                    .or_default()
                    .push(e["id"].as_str().unwrap().into());
            }
            let r = s.post_ok(WRITE_KEY, events);
            assert_eq!(r["accepted"], 100, "{r}");
        }
        users.extend(fresh);
        s.kill9();
        s.restart();
        let status = poll(Duration::from_secs(20), || {
            let r = s.get("/readyz", None);
            match r.json["status"].as_str() {
                Some("recovering") => Some(true),
                Some("ready") => Some(false),
                _ => None,
            }
        });
        // Killed while replaying (or, if it finished first, with nothing left to replay).
        s.kill9();
        if status == Some(true) {
            caught = true;
            break;
        }
        s.restart();
    }
    assert!(
        caught,
        "every restart was ready before it could be killed mid-replay; stderr:\n{}",
        s.stderr()
    );
    s.restart();
    let ready = poll(Duration::from_secs(60), || {
        (s.get("/readyz", None).json["status"] == "ready").then_some(())
    });
    assert!(ready.is_some(), "not ready after recovery: {}", s.stderr());
    assert!(s.stderr().contains("recovered"), "{}", s.stderr());
    for u in &users {
        check_user(&s, u, &sent[u], &sent[u]);
    }
    // Recovery checkpointed everyone: a clean stop and start replays nothing.
    s.sigterm();
    assert!(s
        .wait_exit(Duration::from_secs(15))
        .is_some_and(|st| st.success()));
    let before = s.stderr().matches("recovered").count();
    s.restart();
    assert_eq!(s.get("/readyz", None).json["status"], "ready");
    assert_eq!(
        s.stderr().matches("recovered").count(),
        before,
        "{}",
        s.stderr()
    );
    check_user(&s, &users[7], &sent[&users[7]], &sent[&users[7]]);
}

#[test]
fn a_batch_of_a_hundred_new_users_is_durable_when_acknowledged() {
    let mut s = Server::start(Opts::with_repo_scripts(""));
    let users: Vec<String> = (0..100).map(|i| format!("fresh-{i}")).collect();
    let events: Vec<Value> = users
        .iter()
        .map(|u| for_user(page_view(&eid("n"), "/article/new"), u))
        .collect();
    let r = s.post_ok(WRITE_KEY, events.clone());
    assert_eq!(
        (r["accepted"].clone(), r["duplicates"].clone()),
        (100.into(), 0.into()),
        "{r}"
    );
    // Straight after the acknowledgement: every new user's key and event must be on disk.
    s.kill9();
    s.restart();
    for (u, e) in users.iter().zip(&events) {
        let ex = s.export(u).unwrap_or_else(|| panic!("{u} lost"));
        assert_eq!(
            exported_ids(&ex),
            vec![e["id"].as_str().unwrap().to_string()]
        );
        assert_eq!(ex["state"]["page"], "/article/new", "{u}: {}", ex["state"]);
    }
    // Resent: all duplicates.
    let r = s.post_ok(WRITE_KEY, events);
    assert_eq!(
        (r["accepted"].clone(), r["duplicates"].clone()),
        (0.into(), 100.into()),
        "{r}"
    );
}

/// A resent id is a duplicate at every stage of its first copy: in flight, indexed, and after
/// the checkpoint that lets the shard forget it (then only the indexed `seen` table knows it,
/// read through a snapshot the shard keeps across drains until a write commits).
#[test]
fn resent_ids_stay_duplicates_while_indexing_and_checkpoints_run() {
    let s = Server::start(Opts::with_repo_scripts(
        "[pipeline]\nindex_ms = 20\ncheckpoint_ms = 40\n",
    ));
    let t = s.identify("dedup-user");
    let mut sent: Vec<Value> = Vec::new();
    for round in 0..12 {
        let e = custom(&eid("dd"), "dedup", serde_json::json!({ "round": round }));
        let r = s.post_ok(&t, vec![e.clone()]);
        assert_eq!(
            (r["accepted"].clone(), r["duplicates"].clone()),
            (1.into(), 0.into()),
            "{r}"
        );
        sent.push(e);
        // Every earlier id again, at a different delay after its first copy each round.
        std::thread::sleep(Duration::from_millis(7 * round));
        let r = s.post_ok(&t, sent.clone());
        assert_eq!(r["accepted"], 0, "round {round}: {r}");
        assert_eq!(r["duplicates"], sent.len(), "round {round}: {r}");
    }
    let got = s.export("dedup-user").expect("export");
    assert_eq!(exported_ids(&got), ids_of(&sent), "{got}");
}

/// The ids a checkpoint covers stay the shard's to know until that checkpoint is indexed: with
/// checkpoints far more frequent than index transactions, every resent id is still a
/// duplicate after several checkpoints went out that the store has not applied yet.
#[test]
fn ids_stay_duplicates_between_a_checkpoint_and_its_indexing() {
    let s = Server::start(Opts::with_repo_scripts(
        "[pipeline]\nindex_ms = 60000\ncheckpoint_ms = 30\n",
    ));
    let t = s.identify("ckpt-dedup");
    let mut sent: Vec<Value> = Vec::new();
    for round in 0..6 {
        let e = custom(&eid("cd"), "dedup", serde_json::json!({ "round": round }));
        let r = s.post_ok(&t, vec![e.clone()]);
        assert_eq!(r["accepted"], 1, "round {round}: {r}");
        sent.push(e);
        // Past the checkpoint interval: the user's state (and so its ids) was checkpointed.
        std::thread::sleep(Duration::from_millis(120));
        let r = s.post_ok(&t, sent.clone());
        assert_eq!(r["accepted"], 0, "round {round}: {r}");
        assert_eq!(r["duplicates"], sent.len(), "round {round}: {r}");
    }
}
