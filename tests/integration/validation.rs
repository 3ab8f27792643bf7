//! Malformed input of every kind gets its stable code, HTTP status and field path, over HTTP and
//! WebSocket; afterwards the server still stores valid events (nothing broken, nothing lost).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

const CONFIG: &str = r#"
[limits]
max_body_bytes = 16384
max_batch_events = 10
max_string_len = 256

[delivery]
auth_timeout_s = 1
"#;

fn expect_err(r: &Resp, status: u16, code: &str, path: Option<&str>) {
    assert_eq!(
        (r.status, r.code()),
        (status, code),
        "expected {status} {code}, got {} {}",
        r.status,
        r.body
    );
    assert!(
        r.json["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "error without a message: {}",
        r.body
    );
    if let Some(p) = path {
        assert_eq!(r.path(), p, "wrong path in {}", r.body);
    }
}

#[test]
fn http_rejects_each_kind_of_bad_input_with_code_status_and_path() {
    let s = Server::start(Opts::config(CONFIG));
    let user = "val-user";
    let t = s.identify(user);
    let ev = || scroll(&eid("v"), 40.0, "/article/x");
    let post = |v: &Value| s.post_events(&t, v);

    // Malformed JSON.
    let r = s.post_raw("/v1/events", Some(&t), b"{\"events\": [");
    expect_err(&r, 400, "malformed_json", None);

    // Wrong type.
    let mut e = ev();
    e["props"]["depth"] = "deep".into();
    expect_err(
        &post(&batch(vec![e])),
        422,
        "invalid_type",
        Some("events[0].props.depth"),
    );

    // Unknown fields, in props and at the top level; the path names them.
    let mut e = ev();
    e["props"]["colour"] = "red".into();
    let r = post(&batch(vec![ev(), e]));
    expect_err(&r, 422, "unknown_field", Some("events[1].props.colour"));
    let mut e = ev();
    e["extra_field"] = 1.into();
    expect_err(
        &post(&batch(vec![e])),
        422,
        "unknown_field",
        Some("events[0].extra_field"),
    );

    // Missing field.
    let mut e = ev();
    e.as_object_mut().unwrap().remove("session");
    expect_err(
        &post(&batch(vec![e])),
        422,
        "missing_field",
        Some("events[0].session"),
    );

    // Out of range.
    let mut e = ev();
    e["props"]["depth"] = 120.0.into();
    expect_err(
        &post(&batch(vec![e])),
        422,
        "invalid_value",
        Some("events[0].props.depth"),
    );
    let e = at_hour(ev(), 25);
    expect_err(
        &post(&batch(vec![e])),
        422,
        "invalid_value",
        Some("events[0].context.hour"),
    );

    // Body larger than limits.max_body_bytes (16 KiB).
    let mut e = custom(&eid("big"), "big", Value::Null);
    for i in 0..100 {
        e["props"][format!("k{i}")] = "x".repeat(200).into();
    }
    let body = batch(vec![e]).to_string();
    assert!(body.len() > 16384 && body.len() < 32768);
    let r = s.post_raw("/v1/events", Some(&t), body.as_bytes());
    expect_err(&r, 413, "body_too_large", None);

    // Too many events (limits.max_batch_events = 10).
    let many: Vec<Value> = (0..11).map(|_| ev()).collect();
    expect_err(&post(&batch(many)), 413, "batch_too_large", None);

    // Too long string.
    let mut e = ev();
    e["session"] = "s".repeat(300).into();
    expect_err(
        &post(&batch(vec![e])),
        413,
        "string_too_long",
        Some("events[0].session"),
    );
    let e = hover(&eid("h"), &"t".repeat(257), "start", 0);
    expect_err(
        &post(&batch(vec![e])),
        413,
        "string_too_long",
        Some("events[0].target"),
    );

    // No credentials at all; a malformed Authorization header.
    let r = s.post_raw("/v1/events", None, batch(vec![ev()]).to_string().as_bytes());
    expect_err(&r, 401, "unauthorized", None);
    let r = s.post_raw(
        "/v1/events",
        Some("not-a-key"),
        batch(vec![ev()]).to_string().as_bytes(),
    );
    assert_eq!(r.status, 401, "{}", r.body);

    // The server still works, and none of the rejected events was stored.
    assert!(s.export(user).is_none(), "a rejected event was stored");
    let good: Vec<Value> = (0..3).map(|_| ev()).collect();
    let ids: Vec<String> = good
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    let r = s.post_ok(&t, good);
    assert_eq!(r["accepted"], 3, "{r}");
    let ex = s.export(user).expect("export after valid events");
    assert_eq!(exported_ids(&ex), ids, "{ex}");
    assert_eq!(s.get("/healthz", None).status, 200);
}

#[test]
fn websocket_rejects_bad_origin_auth_and_input() {
    let s = Server::start(Opts::config(CONFIG));

    // A browser page from another origin may not open the socket.
    match s.ws_open(Some("http://evil.example")) {
        Err(tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 403);
            let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap_or(b"{}"))
                .unwrap_or(Value::Null);
            assert_eq!(body["error"]["code"], "origin_not_allowed", "{body}");
        }
        Err(e) => panic!("expected a 403 handshake response, got {e}"),
        Ok(_) => panic!("a foreign Origin opened the WebSocket"),
    }
    // The server's own origin may.
    let own = format!("http://{}", s.addr);
    assert!(
        s.ws_open(Some(&own)).is_ok(),
        "same-origin WebSocket refused"
    );

    // First message is not an auth message → error, then close 1008.
    let mut ws = s.ws_open(None).expect("handshake");
    ws.send_events(vec![scroll(&eid("x"), 1.0, "/")]);
    let m = ws
        .recv_json_until(deadline(WAIT), |m| m["type"] == "error")
        .unwrap_or_else(|| panic!("no error message; seen {:?}", ws.seen));
    assert_eq!(m["code"], "unauthorized", "{m}");
    assert_eq!(ws.wait_close(deadline(WAIT)), Ok(Some(1008)));

    // A bad token → error invalid_token, then close 1008.
    let mut ws = s.ws_open(None).expect("handshake");
    ws.send_json(&json!({"type": "auth", "token": "tt1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}));
    let m = ws
        .recv_json_until(deadline(WAIT), |m| m["type"] == "error")
        .unwrap_or_else(|| panic!("no error message; seen {:?}", ws.seen));
    assert_eq!(m["code"], "invalid_token", "{m}");
    assert_eq!(ws.wait_close(deadline(WAIT)), Ok(Some(1008)));

    // Silent past auth_timeout_s (1 s) → close 1008.
    let mut ws = s.ws_open(None).expect("handshake");
    let opened = Instant::now();
    assert_eq!(ws.wait_close(deadline(WAIT)), Ok(Some(1008)));
    assert!(
        opened.elapsed() >= Duration::from_millis(900),
        "closed before the auth timeout: {:?}",
        opened.elapsed()
    );

    // An authenticated socket: invalid events get an error with code and path; the socket
    // stays usable and the valid events that follow are acknowledged and stored.
    let user = "ws-val-user";
    let t = s.identify(user);
    let mut ws = s.ws_connect(&t);
    let mut e = scroll(&eid("bad"), 40.0, "/a");
    e["props"]["depth"] = "deep".into();
    ws.send_events(vec![e]);
    let m = ws
        .recv_json_until(deadline(WAIT), |m| m["type"] == "error")
        .unwrap_or_else(|| panic!("no error; seen {:?}", ws.seen));
    assert_eq!(m["code"], "invalid_type", "{m}");
    assert_eq!(m["path"], "events[0].props.depth", "{m}");

    let mut e = scroll(&eid("bad"), 40.0, "/a");
    e["props"]["colour"] = "red".into();
    ws.send_events(vec![scroll(&eid("ok"), 1.0, "/a"), e]);
    let m = ws
        .recv_json_until(deadline(WAIT), |m| m["type"] == "error")
        .unwrap_or_else(|| panic!("no error; seen {:?}", ws.seen));
    assert_eq!(m["code"], "unknown_field", "{m}");
    assert_eq!(m["path"], "events[1].props.colour", "{m}");

    ws.send_text("{not json").expect("send");
    let m = ws
        .recv_json_until(deadline(WAIT), |m| m["type"] == "error")
        .unwrap_or_else(|| panic!("no error; seen {:?}", ws.seen));
    assert_eq!(m["code"], "malformed_json", "{m}");

    let mut e = scroll(&eid("bad"), 40.0, "/a");
    e.as_object_mut().unwrap().remove("ts");
    ws.send_events(vec![e]);
    let m = ws
        .recv_json_until(deadline(WAIT), |m| m["type"] == "error")
        .unwrap_or_else(|| panic!("no error; seen {:?}", ws.seen));
    assert_eq!(m["code"], "missing_field", "{m}");
    assert_eq!(m["path"], "events[0].ts", "{m}");

    let good = vec![
        scroll(&eid("good"), 10.0, "/a"),
        scroll(&eid("good"), 20.0, "/a"),
    ];
    let ids: Vec<String> = good
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    ws.send_acked(good);
    let ex = s.export(user).expect("export");
    assert_eq!(
        exported_ids(&ex),
        ids,
        "only the valid events are stored: {ex}"
    );
}

/// Credentials are checked before the body is looked at (DESIGN: "auth, size limits, parse,
/// validate"): a caller without credentials learns nothing about what is wrong with its body.
#[test]
fn unauthenticated_requests_get_401_whatever_the_body() {
    let s = Server::start(Opts::config(CONFIG));
    let mut e = scroll(&eid("v"), 40.0, "/a");
    e["props"]["depth"] = "deep".into();
    // With a bad `Authorization` header, the body is irrelevant: 401.
    for body in [
        batch(vec![]).to_string(),
        batch(vec![e.clone()]).to_string(),
        "{\"events\": [".to_string(),
    ] {
        let r = s.post_raw("/v1/events", Some("wrong-key"), body.as_bytes());
        assert_eq!(r.status, 401, "bad credentials, body {body:?}: {}", r.body);
    }
    // Without any credential (header or body `token`), a well-formed body is still refused
    // with 401, not validated.
    for body in [batch(vec![]).to_string(), batch(vec![e]).to_string()] {
        let r = s.post_raw("/v1/events", None, body.as_bytes());
        assert_eq!(
            (r.status, r.code()),
            (401, "unauthorized"),
            "no credentials, body {body:?}: {}",
            r.body
        );
    }
}
