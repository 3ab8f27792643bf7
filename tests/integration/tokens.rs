//! A user token reads and writes only its own user; forged, expired and missing tokens are
//! refused over HTTP and WebSocket; adjustments never reach another user's socket.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

/// Changes one character in the middle of a token (inside the signed payload).
fn tamper(token: &str) -> String {
    let mut b: Vec<u8> = token.bytes().collect();
    let i = token.len() / 2;
    b[i] = if b[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).expect("ascii token")
}

#[test]
fn a_token_only_reads_and_writes_its_own_user() {
    let s = Server::start(Opts::with_repo_scripts(""));
    let ta = s.identify("alice-7");
    let tb = s.identify("bob-7");

    // Writing another user's events with A's token.
    let r = s.post_events(
        &ta,
        &batch(vec![for_user(custom(&eid("x"), "x", Value::Null), "bob-7")]),
    );
    assert_eq!((r.status, r.code()), (403, "user_mismatch"), "{}", r.body);
    assert_eq!(r.path(), "events[0].user", "{}", r.body);
    let r = s.post_events(
        &ta,
        &batch(vec![
            custom(&eid("x"), "x", Value::Null),
            for_user(custom(&eid("x"), "x", Value::Null), "bob-7"),
        ]),
    );
    assert_eq!(
        (r.status, r.code(), r.path()),
        (403, "user_mismatch", "events[1].user"),
        "{}",
        r.body
    );
    assert!(s.export("bob-7").is_none(), "A wrote B's events");
    assert!(
        s.export("alice-7").is_none(),
        "a refused batch was partly stored"
    );
    // Naming oneself is fine.
    s.post_ok(
        &ta,
        vec![for_user(custom(&eid("a"), "mine", Value::Null), "alice-7")],
    );
    s.post_ok(
        &tb,
        vec![custom(&eid("b"), "bobs", json!({"secret": "bob-only"}))],
    );

    // Admin endpoints with a user token.
    for (path, del) in [
        ("/v1/users/bob-7", false),
        ("/v1/users/alice-7", false),
        ("/v1/rules", false),
        ("/v1/users/bob-7", true),
    ] {
        let r = if del {
            s.delete(path, Some(&ta))
        } else {
            s.get(path, Some(&ta))
        };
        assert!(
            r.status == 401 || r.status == 403,
            "{path} with a user token: {} {}",
            r.status,
            r.body
        );
    }
    assert!(s.export("bob-7").is_some(), "B's data is still there");
    // Decide for another user.
    let r = s.post_raw(
        "/v1/decide",
        Some(&ta),
        json!({"user": "bob-7", "slot": "offer"})
            .to_string()
            .as_bytes(),
    );
    assert_eq!((r.status, r.code()), (403, "user_mismatch"), "{}", r.body);

    // GET /v1/me shows only A's data.
    let me = s.get("/v1/me", Some(&ta));
    assert_eq!(me.status, 200, "{}", me.body);
    let names: Vec<&str> = me.json["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["props"]["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names, vec!["mine"], "{}", me.body);
    assert!(!me.body.contains("bob-only") && !me.body.contains("bobs"));

    // Two users on WebSocket: A's adjustment never reaches B.
    let mut wa = s.ws_connect(&ta);
    let mut wb = s.ws_connect(&tb);
    wa.send_acked(vec![page_view(&eid("pv"), "/article/a")]);
    wa.send_events(vec![scroll(&eid("sc"), 90.0, "/article/a")]);
    let adj = wa
        .wait_adjust("offer", deadline(WAIT))
        .unwrap_or_else(|| panic!("A got no offer; seen {:?}", wa.seen));
    assert_eq!(adj["variant"], "discount");
    // B sends an event and gets its ack: anything pushed to B before that ack is in `seen`.
    wb.send_acked(vec![custom(&eid("b"), "b-event", Value::Null)]);
    wb.send_acked(vec![custom(&eid("b"), "b-event", Value::Null)]);
    assert!(wb.adjusts(None).is_empty(), "B received {:?}", wb.seen);
    // B's socket cannot write as A either.
    wb.send_events(vec![for_user(
        custom(&eid("b"), "x", Value::Null),
        "alice-7",
    )]);
    let m = wb
        .recv_json_until(deadline(WAIT), |m| m["type"] == "error")
        .expect("error for a foreign user on WS");
    assert_eq!(m["code"], "user_mismatch", "{m}");
    assert_eq!(m["path"], "events[0].user", "{m}");
    assert!(wb.adjusts(None).is_empty(), "B received {:?}", wb.seen);

    // Forged token: one character changed.
    let forged = tamper(&ta);
    assert_ne!(forged, ta);
    let r = s.post_events(&forged, &batch(vec![custom(&eid("f"), "f", Value::Null)]));
    assert_eq!((r.status, r.code()), (401, "invalid_token"), "{}", r.body);
    let r = s.get("/v1/me", Some(&forged));
    assert_eq!((r.status, r.code()), (401, "invalid_token"), "{}", r.body);
    let mut ws = s.ws_open(None).expect("handshake");
    ws.send_json(&json!({"type": "auth", "token": forged}));
    let m = ws
        .recv_json_until(deadline(WAIT), |m| m["type"] == "error")
        .unwrap_or_else(|| panic!("forged token accepted on WS; seen {:?}", ws.seen));
    assert_eq!(m["code"], "invalid_token", "{m}");
    assert_eq!(ws.wait_close(deadline(WAIT)), Ok(Some(1008)));

    // Missing credentials.
    let r = s.get("/v1/me", None);
    assert_eq!((r.status, r.code()), (401, "unauthorized"), "{}", r.body);
    let valid = batch(vec![custom(&eid("m"), "m", Value::Null)]).to_string();
    let r = s.post_raw("/v1/events", None, valid.as_bytes());
    assert_eq!((r.status, r.code()), (401, "unauthorized"), "{}", r.body);
    // The write key is not a user: /v1/me needs a token.
    let r = s.get("/v1/me", Some(WRITE_KEY));
    assert_eq!(r.status, 403, "{}", r.body);
}

#[test]
fn expired_tokens_are_refused_on_http_and_websocket() {
    let s = Server::start(Opts::with_repo_scripts("token_ttl_s = 1\n"));
    let t = s.identify("short-lived");
    // Wait (polling, no fixed sleep) until the server says the token has expired.
    let r = poll(Duration::from_secs(10), || {
        let r = s.get("/v1/me", Some(&t));
        assert!(
            r.status == 404 || r.status == 200 || r.code() == "token_expired",
            "unexpected answer for a fresh token: {} {}",
            r.status,
            r.body
        );
        (r.code() == "token_expired").then_some(r)
    })
    .expect("the token never expired (token_ttl_s = 1)");
    assert_eq!(r.status, 401, "{}", r.body);
    let r = s.post_events(&t, &batch(vec![custom(&eid("e"), "late", Value::Null)]));
    assert_eq!((r.status, r.code()), (401, "token_expired"), "{}", r.body);

    let mut ws = s.ws_open(None).expect("handshake");
    ws.send_json(&json!({"type": "auth", "token": t}));
    let m = ws
        .recv_json_until(deadline(WAIT), |m| m["type"] == "error")
        .unwrap_or_else(|| panic!("expired token accepted on WS; seen {:?}", ws.seen));
    assert_eq!(m["code"], "token_expired", "{m}");
    assert_eq!(ws.wait_close(deadline(WAIT)), Ok(Some(1008)));
    assert!(
        s.export("short-lived").is_none(),
        "an expired token wrote events"
    );

    // A fresh token works again.
    let t2 = s.identify("short-lived");
    let r = s.post_events(&t2, &batch(vec![custom(&eid("e"), "fresh", Value::Null)]));
    assert!(
        r.status == 202 || r.code() == "token_expired",
        "{} {}",
        r.status,
        r.body
    );
}
