//! Behavioural signals over real HTTP and WebSocket: `signal` events are validated per kind,
//! counted in the user's state (export and `/v1/me` show `signals` with both scores), and the
//! example rules `exit_offer` and `frustration_help` fire on them.

use serde_json::{json, Value};

use crate::support::*;

fn signal(id: &str, props: Value) -> Value {
    let mut e = page_view(id, "/article/a");
    e["type"] = "signal".into();
    e["props"] = props;
    e
}

#[test]
fn signals_are_checked_per_kind_counted_in_state_and_reset_by_a_new_session() {
    let s = Server::start(Opts::with_repo_scripts(""));
    let token = s.identify("sig-1");
    s.post_ok(
        &token,
        vec![
            page_view(&eid("pv"), "/article/a"),
            signal(
                &eid("s"),
                json!({"kind": "rage_click", "count": 4, "duration_ms": 600}),
            ),
            signal(&eid("s"), json!({"kind": "dead_click"})),
            signal(
                &eid("s"),
                json!({"kind": "hesitation", "duration_ms": 1800, "via": "hover"}),
            ),
            signal(
                &eid("s"),
                json!({"kind": "engagement", "duration_ms": 15000}),
            ),
            signal(&eid("s"), json!({"kind": "reading", "wpm": 240.0})),
            signal(
                &eid("s"),
                json!({"kind": "motion", "state": "walking", "tilt": 30.0}),
            ),
        ],
    );
    // A field another kind takes: refused with its path, nothing of the batch stored.
    let r = s.post_events(
        &token,
        &batch(vec![
            signal(&eid("s"), json!({"kind": "exit_intent", "via": "top"})),
            signal(&eid("s"), json!({"kind": "dead_click", "wpm": 100})),
        ]),
    );
    assert_eq!(
        (r.status, r.code(), r.path()),
        (422, "unknown_field", "events[1].props.wpm"),
        "{}",
        r.body
    );
    let r = s.post_events(
        &token,
        &batch(vec![signal(
            &eid("s"),
            json!({"kind": "exit_intent", "via": "idle"}),
        )]),
    );
    assert_eq!(
        (r.status, r.code(), r.path()),
        (422, "invalid_value", "events[0].props.via"),
        "{}",
        r.body
    );

    let me = s.get("/v1/me", Some(&token));
    assert_eq!(me.status, 200, "{}", me.body);
    let g = &me.json["state"]["signals"];
    assert_eq!(g["rage_clicks"], 1, "{g}");
    assert_eq!(g["dead_clicks"], 1, "{g}");
    assert_eq!(g["exit_intents"], 0, "the refused batch left nothing: {g}");
    assert_eq!(
        (g["hesitations"].as_i64(), g["hesitation_ms"].as_i64()),
        (Some(1), Some(1800)),
        "{g}"
    );
    assert_eq!(g["engaged_ms"], 15000, "{g}");
    assert_eq!(g["reading_wpm"], 240.0, "{g}");
    assert_eq!(
        (g["motion"].as_str(), g["tilt"].as_f64()),
        (Some("walking"), Some(30.0)),
        "{g}"
    );
    // 1 − e^−(0.6 + 0.3)
    let f = g["frustration"].as_f64().unwrap();
    assert!((f - (1.0 - (-0.9f64).exp())).abs() < 1e-9, "{g}");
    // (1 − e^−(0.8·0.25 + 0.4·1 + 0)) with no scroll yet
    let i = g["intent"].as_f64().unwrap();
    assert!((i - (1.0 - (-0.6f64).exp())).abs() < 1e-9, "{g}");
    // Counted by kind on /metrics (every kind listed, from zero).
    let m = s.get("/metrics", None).body;
    for (kind, n) in [
        ("rage_click", 1),
        ("dead_click", 1),
        ("hesitation", 1),
        ("exit_intent", 0),
        ("error_click", 0),
    ] {
        let line = format!("trimtab_signals_total{{kind=\"{kind}\"}} {n}");
        assert!(m.lines().any(|l| l == line), "no `{line}` in /metrics");
    }
    // The export lists the signal events as sent.
    let events = me.json["events"].as_array().unwrap();
    let kinds: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "signal")
        .map(|e| e["props"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "rage_click",
            "dead_click",
            "hesitation",
            "engagement",
            "reading",
            "motion"
        ]
    );

    // A new session starts from no signals.
    let mut next = signal(
        &eid("s"),
        json!({"kind": "quick_back", "duration_ms": 2500}),
    );
    next["session"] = "session-2".into();
    s.post_ok(&token, vec![next]);
    let g = s.get("/v1/me", Some(&token)).json["state"]["signals"].clone();
    assert_eq!(
        (g["rage_clicks"].as_i64(), g["quick_backs"].as_i64()),
        (Some(0), Some(1)),
        "{g}"
    );
    assert!(
        (g["frustration"].as_f64().unwrap() - (1.0 - (-0.4f64).exp())).abs() < 1e-9,
        "{g}"
    );

    // The signals survive a kill -9 (rebuilt from the log like the rest of the state) and a
    // clean stop (checkpointed with it).
    let mut s = s;
    s.kill9();
    s.restart();
    let g = s.get("/v1/me", Some(&token)).json["state"]["signals"].clone();
    assert_eq!(
        (g["quick_backs"].as_i64(), g["dead_clicks"].as_i64()),
        (Some(1), Some(0)),
        "{g}"
    );
    s.sigterm();
    assert!(s.wait_exit(std::time::Duration::from_secs(20)).is_some());
    s.restart();
    let g = s.get("/v1/me", Some(&token)).json["state"]["signals"].clone();
    assert_eq!(g["quick_backs"], 1, "{g}");
}

#[test]
fn exit_intent_and_frustration_push_the_example_rules_adjustments() {
    let s = Server::start(Opts::with_repo_scripts(""));
    let token = s.identify("sig-2");
    let mut ws = s.ws_connect(&token);
    ws.send_acked(vec![page_view(&eid("pv"), "/article/a")]);
    ws.send_acked(vec![scroll(&eid("sc"), 45.0, "/article/a")]);
    // A hidden tab is not a reason to show anything.
    ws.send_acked(vec![signal(
        &eid("x"),
        json!({"kind": "exit_intent", "via": "hidden"}),
    )]);
    ws.send_acked(vec![custom(&eid("barrier"), "barrier", Value::Null)]);
    assert!(ws.adjusts(Some("exit_offer")).is_empty(), "{:?}", ws.seen);
    ws.send_events(vec![signal(
        &eid("x"),
        json!({"kind": "exit_intent", "via": "top"}),
    )]);
    let adj = ws
        .wait_adjust("exit_offer", deadline(WAIT))
        .unwrap_or_else(|| panic!("no exit offer; seen {:?}", ws.seen));
    assert_eq!(
        (adj["variant"].as_str(), adj["params"]["code"].as_str()),
        (Some("stay"), Some("STAY10")),
        "{adj}"
    );

    // One rage burst (0.45) is not enough; a dead click after it (0.59) is.
    ws.send_acked(vec![signal(
        &eid("r"),
        json!({"kind": "rage_click", "count": 3}),
    )]);
    ws.send_acked(vec![custom(&eid("barrier"), "barrier", Value::Null)]);
    assert!(ws.adjusts(Some("help")).is_empty(), "{:?}", ws.seen);
    ws.send_events(vec![signal(&eid("d"), json!({"kind": "dead_click"}))]);
    let adj = ws
        .wait_adjust("help", deadline(WAIT))
        .unwrap_or_else(|| panic!("no help; seen {:?}", ws.seen));
    assert_eq!(adj["variant"], "offer_help", "{adj}");
    assert_eq!(adj["decision"]["rule"], "frustration_help", "{adj}");
}
