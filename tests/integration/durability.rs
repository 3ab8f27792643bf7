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
